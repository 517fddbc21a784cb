"""Chat sessions and profiles through the live server: CRUD, multi-turn, isolation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from inference.models import Job
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e


def api(live: Live, user: ApiUser, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{live.base_url}{path}", headers=user.headers, timeout=30, **kwargs)


def test_session_crud(live: Live, api_user: ApiUser) -> None:
    created = api(live, api_user, "POST", "/api/v1/sessions", json={"title": "Trip"})
    assert created.status_code == 201
    session = created.json()
    assert (
        session["object"] == "chat.session" and session["title"] == "Trip" and session["message_count"] == 0
    )
    for _ in range(2):
        api(live, api_user, "POST", "/api/v1/sessions", json={})
    listed = api(live, api_user, "GET", "/api/v1/sessions", params={"limit": 2}).json()
    assert listed["total"] == 3 and len(listed["data"]) == 2
    renamed = api(
        live, api_user, "PATCH", f"/api/v1/sessions/{session['id']}", json={"title": "Trip to Oslo"}
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "Trip to Oslo"
    got = api(live, api_user, "GET", f"/api/v1/sessions/{session['id']}").json()
    assert got["title"] == "Trip to Oslo" and got["messages"]["total"] == 0
    assert api(live, api_user, "DELETE", f"/api/v1/sessions/{session['id']}").status_code == 204
    assert api(live, api_user, "GET", f"/api/v1/sessions/{session['id']}").status_code == 404
    bad = api(live, api_user, "PATCH", "/api/v1/sessions/not-a-uuid", json={"title": 5})
    assert bad.status_code in (400, 404)


def test_multi_turn_conversation(live: Live, api_user: ApiUser) -> None:
    session_id = api(live, api_user, "POST", "/api/v1/sessions", json={"title": "chat"}).json()["id"]
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0)

    def turn(content: str) -> Any:
        return client.chat.completions.create(
            model=TEST_MODEL_NAME,
            messages=[{"role": "user", "content": content}],
            max_tokens=8,
            temperature=0,
            extra_body={"session_id": session_id, "ignore_eos": True},
        )

    first = turn("Tell me about rivers.")
    second = turn("And about lakes?")
    assert first.model_extra and first.model_extra["session_id"] == session_id
    # The second turn's prompt carried the first turn: its prompt is longer by at least the
    # first turn's question and answer.
    assert first.usage and second.usage
    assert second.usage.prompt_tokens >= first.usage.prompt_tokens + first.usage.completion_tokens
    detail = api(live, api_user, "GET", f"/api/v1/sessions/{session_id}", params={"limit": 3}).json()
    messages = detail["messages"]
    assert messages["total"] == 4 and len(messages["data"]) == 3
    assert [m["role"] for m in messages["data"]] == ["user", "assistant", "user"]
    assert messages["data"][0]["content"] == "Tell me about rivers."
    assert messages["data"][1]["content"] == first.choices[0].message.content
    rest = api(live, api_user, "GET", f"/api/v1/sessions/{session_id}", params={"offset": 3}).json()
    assert rest["messages"]["data"][0]["content"] == second.choices[0].message.content
    job = Job.objects.get(id=messages["data"][1]["job_id"])
    assert str(job.session_id) == session_id


def test_another_users_session_is_invisible_everywhere(
    live: Live, make_api_user: Callable[..., ApiUser]
) -> None:
    alice, bob = make_api_user("alice"), make_api_user("bob")
    session_id = api(live, alice, "POST", "/api/v1/sessions", json={"title": "private"}).json()["id"]
    path = f"/api/v1/sessions/{session_id}"
    assert api(live, bob, "GET", path).status_code == 404
    assert api(live, bob, "PATCH", path, json={"title": "mine"}).status_code == 404
    assert api(live, bob, "DELETE", path).status_code == 404
    assert api(live, bob, "GET", "/api/v1/sessions").json()["total"] == 0
    body = {
        "model": TEST_MODEL_NAME,
        "messages": [{"role": "user", "content": "hi"}],
        "session_id": session_id,
    }
    chat = api(live, bob, "POST", "/v1/chat/completions", json=body)
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "session_not_found"
    job = api(live, bob, "POST", "/api/v1/jobs", json={k: v for k, v in body.items() if k != "model"})
    assert job.status_code == 404
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=bob.headers) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(json.dumps({"type": "request", "messages": body["messages"], "session_id": session_id}))
        error = json.loads(ws.recv(timeout=10))
    assert error["type"] == "error" and error["error"]["code"] == "session_not_found"
    assert api(live, alice, "GET", path).json()["title"] == "private"  # untouched


def test_profile_get_and_update(live: Live, api_user: ApiUser) -> None:
    assert api(live, api_user, "GET", "/api/v1/me/profile").json() == {
        "object": "profile",
        "language": "",
        "role": "",
        "interests": "",
    }
    updated = api(live, api_user, "PATCH", "/api/v1/me/profile", json={"language": "German", "role": "pilot"})
    assert updated.status_code == 200 and updated.json()["language"] == "German"
    assert api(live, api_user, "GET", "/api/v1/me/profile").json()["role"] == "pilot"
    assert api(live, api_user, "PATCH", "/api/v1/me/profile", json={"language": 3}).status_code == 400
    assert api(live, api_user, "PATCH", "/api/v1/me/profile", json={"role": "x" * 500}).status_code == 400
