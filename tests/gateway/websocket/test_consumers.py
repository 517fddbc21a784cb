"""WebSocket API at /ws/v1/jobs/ through a live uvicorn (a real WebSocket client)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from config.processes import wait_until
from inference.models import Job, JobStatus
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.e2e


def recv(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def until_end(ws: ClientConnection, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tokens = []
    while True:
        message = recv(ws)
        if message["type"] == "token" and message["job_id"] == job_id:
            tokens.append(message)
        elif message["type"] == "end" and message["job_id"] == job_id:
            return tokens, message


def test_round_trip_with_header_auth(live: Live, api_user: ApiUser) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers) as ws:
        assert recv(ws) == {"type": "ready"}
        ws.send(json.dumps({"type": "ping"}))
        assert recv(ws) == {"type": "pong"}
        ws.send(
            json.dumps(
                {
                    "type": "request",
                    "request_id": "r1",
                    "prompt": "The river",
                    "max_tokens": 12,
                    "temperature": 0,
                }
            )
        )
        accepted = recv(ws)
        assert accepted["type"] == "job" and accepted["request_id"] == "r1"
        tokens, end = until_end(ws, accepted["job_id"])
    assert end["status"] == "succeeded" and end["usage"]["completion_tokens"] == 12
    job = Job.objects.get(id=accepted["job_id"])
    assert job.user == api_user.user and job.source == "ws"
    assert "".join(t["text"] for t in tokens) == job.output_text


def test_first_message_auth_and_chat(live: Live, api_user: ApiUser) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/") as ws:
        ws.send(json.dumps({"type": "auth", "api_key": api_user.key}))
        assert recv(ws)["type"] == "ready"
        ws.send(
            json.dumps({"type": "request", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5})
        )
        accepted = recv(ws)
        _, end = until_end(ws, accepted["job_id"])
        assert end["status"] == "succeeded"


def test_bad_key_is_refused(live: Live) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/") as ws:
        ws.send(json.dumps({"type": "auth", "api_key": "sk-sl-wrong"}))
        message = recv(ws)
        assert message["type"] == "error" and message["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_nothing_before_auth(live: Live) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/") as ws:
        ws.send(json.dumps({"type": "request", "prompt": "x"}))
        assert recv(ws)["type"] == "error"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def start_long_job(ws: ClientConnection) -> str:
    """Start a job that runs for a while and return its id once it is generating."""
    assert recv(ws)["type"] == "ready"
    ws.send(
        json.dumps(
            {"type": "request", "prompt": "Once", "max_tokens": 480, "temperature": 0, "ignore_eos": True}
        )
    )
    job_id = str(recv(ws)["job_id"])
    while recv(ws)["type"] != "token":
        pass
    return job_id


def test_cancel_message(live: Live, api_user: ApiUser) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers) as ws:
        job_id = start_long_job(ws)
        ws.send(json.dumps({"type": "cancel", "job_id": job_id}))
        _, end = until_end(ws, job_id)
    assert end["status"] == "cancelled"
    assert end["finish_reason"] == "cancelled"
    assert Job.objects.get(id=job_id).completion_tokens < 480  # type: ignore[operator]


def test_disconnect_cancels_the_sockets_jobs(live: Live, api_user: ApiUser) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers) as ws:
        job_id = start_long_job(ws)
    wait_until(
        lambda: Job.objects.get(id=job_id).status == JobStatus.CANCELLED, timeout=20, what="cancellation"
    )


def test_subscribe_follows_an_existing_job_and_isolation(live: Live, make_api_user: Any) -> None:
    alice, bob = make_api_user("alice"), make_api_user("bob")
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=alice.headers) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "request", "prompt": "The river", "max_tokens": 8, "temperature": 0}))
        job_id = recv(ws)["job_id"]
        tokens, _ = until_end(ws, job_id)
        ws.send(json.dumps({"type": "subscribe", "job_id": job_id, "after": tokens[2]["id"]}))
        replay, end = until_end(ws, job_id)
        assert [t["id"] for t in replay] == [t["id"] for t in tokens[3:]]
        assert end["status"] == "succeeded"
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=bob.headers) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "subscribe", "job_id": job_id}))
        assert recv(ws)["error"]["code"] == "not_found"
        ws.send(json.dumps({"type": "cancel", "job_id": job_id}))
        assert recv(ws)["error"]["code"] == "not_found"


def test_invalid_messages_get_error_envelopes(live: Live, api_user: ApiUser) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers) as ws:
        recv(ws)
        ws.send("not json")
        assert recv(ws)["error"]["code"] == "invalid_json"
        ws.send(json.dumps({"type": "teleport"}))
        assert recv(ws)["error"]["code"] == "invalid_message"
        ws.send(json.dumps({"type": "request", "request_id": 9, "prompt": "x", "max_tokens": "lots"}))
        error = recv(ws)
        assert error["request_id"] == 9 and error["error"]["param"] == "max_tokens"
        ws.send(json.dumps({"type": "request", "prompt": "x", "model": "nope"}))
        assert recv(ws)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        # The same host on a port Sluice does not serve: another site (a local dev server, say).
        "http://127.0.0.1:9999",
        "http://localhost:9999",
    ],
)
def test_foreign_origin_is_refused(live: Live, api_user: ApiUser, origin: str) -> None:
    with (
        pytest.raises((InvalidStatus, ConnectionClosed)),
        connect(
            f"{live.ws_url}/ws/v1/jobs/",
            additional_headers={**api_user.headers, "Origin": origin},
        ) as ws,
    ):
        ws.recv(timeout=10)


def test_the_origin_sluice_serves_is_accepted(live: Live, api_user: ApiUser) -> None:
    with connect(
        f"{live.ws_url}/ws/v1/jobs/", additional_headers={**api_user.headers, "Origin": live.base_url}
    ) as ws:
        assert json.loads(ws.recv(timeout=30)) == {"type": "ready"}
