"""Knowledge bases through the live server and its embeddings worker: uploads (text, HTML,
PDF), progress, search, retrieval into chat with citations (JSON, SSE, events, WebSocket),
sharing and isolation, bad files, and the result cache."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from config.processes import wait_until
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live
from tests.inference.rag.test_extract import minimal_pdf
from tests.support.sse import read_events

pytestmark = pytest.mark.e2e

FACTS = {
    "belcrag.txt": "Belcrag is famous for saddle leather. Its tanners sell leather goods to the northern hill towns.",
    "esktown.md": "# Esktown\n\nEsktown lies on a chalk plateau and its climate is cold and snowy in winter.",
}


def api(live: Live, user: ApiUser, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{live.base_url}{path}", headers=user.headers, timeout=60, **kwargs)


def make_kb(live: Live, user: ApiUser, name: str = "towns", **extra: Any) -> str:
    response = api(live, user, "POST", "/api/v1/knowledge-bases", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait_document(live: Live, user: ApiUser, kb_id: str, doc_id: str) -> dict[str, Any]:
    def settled() -> bool:
        status = api(live, user, "GET", f"/api/v1/knowledge-bases/{kb_id}/documents/{doc_id}").json()[
            "status"
        ]
        return bool(status in ("ready", "failed"))

    wait_until(settled, timeout=60, what="the document to be ingested")
    return api(live, user, "GET", f"/api/v1/knowledge-bases/{kb_id}/documents/{doc_id}").json()


def upload_text(live: Live, user: ApiUser, kb_id: str, name: str, text: str) -> dict[str, Any]:
    response = api(
        live, user, "POST", f"/api/v1/knowledge-bases/{kb_id}/documents", json={"name": name, "text": text}
    )
    assert response.status_code == 202, response.text
    return wait_document(live, user, kb_id, response.json()["id"])


@pytest.fixture
def towns(live: Live, api_user: ApiUser) -> str:
    kb_id = make_kb(live, api_user)
    for name, text in FACTS.items():
        assert upload_text(live, api_user, kb_id, name, text)["status"] == "ready"
    return kb_id


def chat_body(kb_id: str, question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": TEST_MODEL_NAME,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 6,
        "knowledge_base_ids": [kb_id],
        **extra,
    }


def test_uploads_in_every_format_and_progress(live: Live, api_user: ApiUser) -> None:
    kb_id = make_kb(live, api_user)
    html = b"<html><body><h1>Belford</h1><p>Belford makes church bells.</p><script>x()</script></body></html>"
    for name, content, content_type in (
        ("belford.html", html, "text/html"),
        ("report.pdf", minimal_pdf("Dunmere exports blue-glazed tiles"), "application/pdf"),
    ):
        response = api(
            live,
            api_user,
            "POST",
            f"/api/v1/knowledge-bases/{kb_id}/documents",
            files={"file": (name, content, content_type)},
        )
        assert response.status_code == 202, response.text
        queued = response.json()
        assert queued["status"] == "queued" and queued["content_type"] == content_type
        done = wait_document(live, api_user, kb_id, queued["id"])
        assert done["status"] == "ready" and done["chunks_total"] == done["chunks_done"] >= 1
        assert done["progress"] == 1.0
    listed = api(live, api_user, "GET", f"/api/v1/knowledge-bases/{kb_id}/documents").json()
    assert [d["name"] for d in listed["data"]] == ["belford.html", "report.pdf"]
    found = api(
        live, api_user, "POST", "/api/v1/knowledge-bases/search",
        json={"query": "Which town exports tiles?", "knowledge_base_ids": [kb_id], "top_k": 2},
    ).json()["data"]  # fmt: skip
    assert found[0]["document"] == "report.pdf" and "blue-glazed tiles" in found[0]["text"]
    assert found[0]["score"] > found[-1]["score"] or len(found) == 1


def test_bad_files_fail_clearly_without_hurting_the_worker(live: Live, api_user: ApiUser) -> None:
    kb_id = make_kb(live, api_user)
    empty = api(
        live, api_user, "POST", f"/api/v1/knowledge-bases/{kb_id}/documents", files={"file": ("empty.txt", b"", "text/plain")}
    )  # fmt: skip
    assert empty.status_code == 202
    failed = wait_document(live, api_user, kb_id, empty.json()["id"])
    assert failed["status"] == "failed" and "no text" in failed["error"]
    broken = api(
        live, api_user, "POST", f"/api/v1/knowledge-bases/{kb_id}/documents",
        files={"file": ("broken.pdf", b"%PDF-1.4 not really", "application/pdf")},
    )  # fmt: skip
    assert wait_document(live, api_user, kb_id, broken.json()["id"])["status"] == "failed"
    unsupported = api(
        live, api_user, "POST", f"/api/v1/knowledge-bases/{kb_id}/documents",
        files={"file": ("sheet.xlsx", b"PK\x03\x04", "application/vnd.ms-excel")},
    )  # fmt: skip
    assert unsupported.status_code == 415 and unsupported.json()["error"]["code"] == "unsupported_file"
    # The worker is still fine.
    assert upload_text(live, api_user, kb_id, "ok.txt", "Fine text.")["status"] == "ready"


def test_chat_retrieves_and_cites_in_json_sse_events_and_websocket(
    live: Live, api_user: ApiUser, towns: str
) -> None:
    question = "What is Belcrag famous for?"
    body = api(live, api_user, "POST", "/v1/chat/completions", json=chat_body(towns, question)).json()
    citations = body["citations"]
    assert citations[0]["document"] == "belcrag.txt" and citations[0]["score"] > 0.3
    assert {"document_id", "chunk_id", "chunk_index", "knowledge_base_id"} <= set(citations[0])

    # SSE: the citations chunk comes before the first content.
    with httpx.stream(
        "POST", f"{live.base_url}/v1/chat/completions", json=chat_body(towns, question, stream=True),
        headers=api_user.headers, timeout=60,
    ) as response:  # fmt: skip
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    cited = next(i for i, c in enumerate(chunks) if "citations" in c)
    first_text = next(
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["delta"].get("content")
    )
    assert cited < first_text and chunks[cited]["citations"][0]["document"] == "belcrag.txt"

    # Native job events and WebSocket: a citations event before the tokens.
    job = api(
        live, api_user, "POST", "/api/v1/jobs", json={k: v for k, v in chat_body(towns, question).items() if k != "model"}
    ).json()  # fmt: skip
    events = [
        e.event for e in read_events(f"{live.base_url}/api/v1/jobs/{job['id']}/events", api_user.headers)
    ]
    assert events.index("citations") < events.index("token")
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        request = {k: v for k, v in chat_body(towns, question).items() if k != "model"}
        ws.send(json.dumps({"type": "request", **request}))
        kinds: list[str] = []
        while not kinds or kinds[-1] != "end":
            kinds.append(json.loads(ws.recv(timeout=30))["type"])
    assert kinds.index("citations") < kinds.index("token")


def test_isolation_and_read_only_sharing(live: Live, make_api_user: Callable[..., ApiUser]) -> None:
    alice, bob = make_api_user("alice"), make_api_user("bob")
    kb_id = make_kb(live, alice, "alice-private")
    doc = upload_text(live, alice, kb_id, "secret.txt", "The vault code of Ormere is 4711.")
    base = f"/api/v1/knowledge-bases/{kb_id}"
    search = {"query": "vault code", "knowledge_base_ids": [kb_id]}
    assert api(live, bob, "GET", base).status_code == 404
    assert api(live, bob, "GET", f"{base}/documents").status_code == 404
    assert api(live, bob, "GET", f"{base}/documents/{doc['id']}").status_code == 404
    assert api(live, bob, "DELETE", f"{base}/documents/{doc['id']}").status_code == 404
    assert api(live, bob, "PATCH", base, json={"name": "x"}).status_code == 404
    assert api(live, bob, "POST", f"{base}/documents", json={"name": "n", "text": "t"}).status_code == 404
    assert api(live, bob, "POST", "/api/v1/knowledge-bases/search", json=search).status_code == 404
    chat = api(live, bob, "POST", "/v1/chat/completions", json=chat_body(kb_id, "vault code?"))
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "knowledge_base_not_found"
    assert api(live, bob, "GET", "/api/v1/knowledge-bases").json()["data"] == []

    shared = api(live, alice, "PATCH", base, json={"visibility": "shared", "shared_with": {"users": ["bob"]}})
    assert shared.status_code == 200 and shared.json()["shared_with"]["users"] == ["bob"]
    assert api(live, bob, "GET", base).status_code == 200
    hits = api(live, bob, "POST", "/api/v1/knowledge-bases/search", json=search).json()["data"]
    assert hits and hits[0]["document"] == "secret.txt"
    assert api(live, bob, "POST", f"{base}/documents", json={"name": "n", "text": "t"}).status_code == 403
    assert api(live, bob, "DELETE", base).status_code == 403
    assert "shared_with" not in api(live, bob, "GET", base).json()  # only the owner sees who


def test_result_cache_hit_miss_and_invalidation(live: Live, api_user: ApiUser, towns: str) -> None:
    deterministic = chat_body(towns, "What is Belcrag famous for?", temperature=0, max_tokens=12)

    def ask() -> dict[str, Any]:
        response = api(live, api_user, "POST", "/v1/chat/completions", json=deterministic)
        assert response.status_code == 200, response.text
        return dict(response.json())

    first, second = ask(), ask()
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert second["citations"] == first["citations"]
    # Sampling without a seed is not deterministic: never served from the cache.
    sampled = api(live, api_user, "POST", "/v1/chat/completions", json={**deterministic, "temperature": 0.8})
    assert sampled.json()["cache_hit"] is False
    # A change to a knowledge base the answer used invalidates it.
    upload_text(live, api_user, towns, "extra.txt", "Belcrag also has a famous clock tower.")
    time.sleep(0.2)
    assert ask()["cache_hit"] is False
    assert ask()["cache_hit"] is True


def test_a_cache_hit_streams_like_the_original(live: Live, api_user: ApiUser) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=live.base_url, api_key=api_user.key)
    prompt = "A cached river story:"
    kwargs: dict[str, Any] = {
        "max_new_tokens": 12,
        "details": True,
        "decoder_input_details": False,
        "seed": 7,
    }
    original = client.text_generation(prompt, **kwargs)
    again = client.text_generation(prompt, **kwargs)
    assert again.generated_text == original.generated_text
    assert again.details is not None and original.details is not None
    assert [t.id for t in again.details.tokens] == [t.id for t in original.details.tokens]
    assert len(again.details.tokens) == again.details.generated_tokens
    body = {"model": TEST_MODEL_NAME, "prompt": prompt, "max_tokens": 12, "seed": 7, "stream": True}

    def stream() -> tuple[list[str], bool]:
        with httpx.stream(
            "POST", f"{live.base_url}/v1/completions", json=body, headers=api_user.headers, timeout=60
        ) as response:
            chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        texts = [c["choices"][0]["text"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
        return texts, bool(chunks[-1]["cache_hit"])

    generated, first_hit = stream()
    replayed, second_hit = stream()
    assert not first_hit and second_hit
    assert len(replayed) > 1 and "".join(replayed) == "".join(generated)
