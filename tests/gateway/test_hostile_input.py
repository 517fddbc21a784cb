"""Hostile and broken input: always a 4xx in the route's envelope, never a 500, never a job,
never a crashed socket."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from inference.models import Document, Job
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

SUBMIT_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/generate",
                 "/generate_stream", "/", "/api/v1/jobs", "/api/v1/sessions", "/api/v1/knowledge-bases"]  # fmt: skip


def raw(live: Live, user: ApiUser, path: str, body: str | bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{live.base_url}{path}",
        content=body,
        headers={**user.headers, "Content-Type": "application/json", **headers},
        timeout=60,
    )


def assert_client_error(path: str, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (path, response.status_code, response.text[:300])
    body = response.json()
    if path in ("/generate", "/generate_stream", "/"):
        assert isinstance(body["error"], str) and "error_type" in body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}


STOPS = [('"\\u0000"', "NUL"), ('"\\ud800"', "lone surrogate"), ('["ok", "\\udfff"]', "surrogate in a list")]


@pytest.mark.parametrize(("stop", "what"), STOPS, ids=[s[1] for s in STOPS])
@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/v1/jobs", '{"prompt": "a", "stop": %s}'),
        ("/v1/completions", f'{{"model": "{TEST_MODEL_NAME}", "prompt": "a", "stop": %s}}'),
        ("/v1/chat/completions", f'{{"model": "{TEST_MODEL_NAME}", "messages": [{{"role": "user", "content": "a"}}], "stop": %s}}'),
        ("/generate", '{"inputs": "a", "parameters": {"stop": %s}}'),
    ],
)  # fmt: skip
def test_unstorable_stop_sequences(
    live: Live, api_user: ApiUser, path: str, template: str, stop: str, what: str
) -> None:
    before = Job.objects.count()
    response = raw(live, api_user, path, template % stop)
    assert_client_error(path, response, 422 if path == "/generate" else 400)
    assert Job.objects.count() == before


def test_lone_surrogate_in_message_content(live: Live, api_user: ApiUser) -> None:
    body = f'{{"model": "{TEST_MODEL_NAME}", "messages": [{{"role": "user", "content": "x\\ud800y"}}]}}'
    assert_client_error("/v1/chat/completions", raw(live, api_user, "/v1/chat/completions", body), 400)
    responses = f'{{"model": "{TEST_MODEL_NAME}", "input": "x\\udc00"}}'
    assert_client_error("/v1/responses", raw(live, api_user, "/v1/responses", responses), 400)


@pytest.mark.parametrize("path", SUBMIT_ROUTES)
def test_deeply_nested_json(live: Live, api_user: ApiUser, path: str) -> None:
    for depth in (1000, 100_000):
        body = "[" * depth + "]" * depth
        assert_client_error(path, raw(live, api_user, path, body), 400)
        nested = '{"a": ' * depth + "1" + "}" * depth
        assert_client_error(path, raw(live, api_user, path, nested), 400)


@pytest.mark.parametrize("path", SUBMIT_ROUTES)
def test_huge_json_body_is_413(live: Live, api_user: ApiUser, path: str) -> None:
    body = b'{"prompt": "' + b"a" * (30 * 1024 * 1024) + b'"}'
    assert_client_error(path, raw(live, api_user, path, body), 413)


def test_query_parameters(live: Live, api_user: ApiUser) -> None:
    base = live.base_url
    for url in (
        "/api/v1/jobs?status=%00",
        "/api/v1/jobs?status=nonsense",
        "/api/v1/jobs?limit=abc",
        "/api/v1/sessions?offset=100000000000000000000",
        "/api/v1/sessions?limit=-1",
        "/v1/responses/resp_00000000000000000000000000000000/input_items?limit=1000",
    ):
        response = httpx.get(f"{base}{url}", headers=api_user.headers, timeout=30)
        assert response.status_code in (400, 404), (url, response.text)
        assert "error" in response.json()
    job = httpx.post(
        f"{base}/api/v1/jobs", json={"prompt": "x", "max_tokens": 2}, headers=api_user.headers
    ).json()
    for cursor in ("99999999999999999999999-0", "1-99999999999999999999999", "abc", "-1-0", "1-2-3"):
        response = httpx.get(
            f"{base}/api/v1/jobs/{job['id']}/events", headers={**api_user.headers, "Last-Event-ID": cursor}
        )
        assert response.status_code == 400, (cursor, response.text)
        assert response.json()["error"]["param"] == "Last-Event-ID"


def test_uploads_over_the_limit_are_refused_at_upload(live: Live, api_user: ApiUser, settings: Any) -> None:
    kb = httpx.post(
        f"{live.base_url}/api/v1/knowledge-bases", json={"name": "uploads"}, headers=api_user.headers
    ).json()["id"]
    url = f"{live.base_url}/api/v1/knowledge-bases/{kb}/documents"
    big = b"%PDF-1.4\n" + b"0" * (settings.SLUICE_MAX_UPLOAD_BYTES + 1024)
    too_big = httpx.post(
        url, files={"file": ("big.pdf", big, "application/pdf")}, headers=api_user.headers, timeout=60
    )
    assert too_big.status_code == 413, too_big.text

    # Sent without a Content-Length (chunked): counted as it arrives, cut off at the limit.
    def chunks() -> Any:
        yield b'{"name": "huge.txt", "text": "'
        for _ in range(200):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    chunked = httpx.post(url, content=chunks(), headers={**api_user.headers, "Content-Type": "application/json"},
                         timeout=120)  # fmt: skip
    assert chunked.status_code == 413, chunked.text
    fields = {f"field{i}": "x" for i in range(10_000)}
    many = httpx.post(
        url, data=fields, files={"file": ("a.txt", b"hi", "text/plain")}, headers=api_user.headers
    )
    assert many.status_code == 400 and many.json()["error"]["code"] == "too_many_fields"
    assert not Document.objects.filter(knowledge_base_id=kb).exists()  # nothing was stored


def test_websocket_survives_hostile_messages(live: Live, api_user: ApiUser) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers, max_size=2**23) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for message in (
            "[" * 100_000 + "]" * 100_000,
            '{"type": "request", "prompt": "a", "stop": "\\ud800"}',
            '{"type": "request", "messages": [{"role": "user", "content": "\\u0000"}]}',
            '{"type": "subscribe", "job_id": "00000000-0000-0000-0000-000000000000", "after": "99999999999999999999999-0"}',
            '{"type": "subscribe", "job_id": "x", "after": {"nested": true}}',
            "\u0000",
        ):
            ws.send(message)
            reply = json.loads(ws.recv(timeout=30))
            assert reply["type"] == "error", (message[:60], reply)
            assert 400 <= reply["error"].get("status", 400) < 500 or reply["error"]["code"]
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "pong"}  # the socket is still fine


def test_unicode_digits_in_ids_and_cursors(live: Live, api_user: ApiUser) -> None:
    """``"³".isdigit()`` is true and ``int("³")`` raises: ids and cursors are ASCII digits only."""
    with httpx.Client(base_url=live.base_url, headers=api_user.headers, timeout=30) as http:
        for key_id in ("³", "١٢", "1²"):
            response = http.delete(f"/api/v1/me/keys/{key_id}")
            assert response.status_code == 404, (key_id, response.text)
        job = http.post("/api/v1/jobs", json={"prompt": "x", "max_tokens": 2}).json()
        events = http.get(f"/api/v1/jobs/{job['id']}/events", params={"last_event_id": "³-1"})
        assert events.status_code == 400, events.text


def test_a_resume_cursor_past_a_finished_jobs_end_ends_the_stream(live: Live, api_user: ApiUser) -> None:
    with httpx.Client(base_url=live.base_url, headers=api_user.headers, timeout=30) as http:
        job = http.post("/api/v1/jobs", json={"prompt": "x", "max_tokens": 2}).json()
        http.get(f"/api/v1/jobs/{job['id']}/events")  # followed to its end: the job has finished
        far = "18446744073709551615-18446744073709551615"
        # The stream answers at once and ends (the client's read timeout is 30 s).
        response = http.get(f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": far}, timeout=10)
        assert response.status_code == 200
        assert "event: token" not in response.text


@pytest.mark.parametrize(
    "query",
    [
        "limit=-1",
        "limit=0",
        "limit=101",
        "limit=" + "9" * 30,
        "limit=³",
        "offset=-1",
        "offset=x",
        "offset=" + "9" * 12,
    ],
)
def test_job_list_bounds(live: Live, api_user: ApiUser, query: str) -> None:
    response = httpx.get(f"{live.base_url}/api/v1/jobs?{query}", headers=api_user.headers, timeout=30)
    assert_client_error("/api/v1/jobs", response, 400)
    assert response.json()["error"]["param"] == query.partition("=")[0]


def test_job_list_pages(live: Live, api_user: ApiUser) -> None:
    with httpx.Client(base_url=live.base_url, headers=api_user.headers, timeout=60) as http:
        ids = [
            http.post("/api/v1/jobs", json={"prompt": "x", "max_tokens": 1}).json()["id"] for _ in range(3)
        ]
        first = http.get("/api/v1/jobs?limit=2").json()["data"]
        second = http.get("/api/v1/jobs?limit=2&offset=2").json()["data"]
    assert [job["id"] for job in first + second][:3] == ids[::-1]
