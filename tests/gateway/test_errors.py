"""Bad input gets a clear 4xx in OpenAI's envelope, never a 5xx, and creates no job."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from inference.models import Job
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**overrides: Any) -> dict[str, Any]:
    return {"model": TEST_MODEL_NAME, "messages": MESSAGES, "max_tokens": 5, **overrides}


CASES: list[tuple[str, str, Any, int, str | None, str | None]] = [
    # (name, path, body, status, code, param)
    ("wrong type max_tokens", "/v1/chat/completions", chat(max_tokens="12"), 400, "invalid_value", "max_tokens"),
    ("bool as int", "/v1/chat/completions", chat(max_tokens=True), 400, "invalid_value", "max_tokens"),
    ("absurd max_tokens", "/v1/chat/completions", chat(max_tokens=10**12), 400, "invalid_value", "max_tokens"),
    ("zero max_tokens", "/v1/chat/completions", chat(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("context overflow", "/v1/chat/completions", chat(max_tokens=4000), 400, "context_length_exceeded", "max_tokens"),
    ("negative temperature", "/v1/chat/completions", chat(temperature=-1), 400, "invalid_value", "temperature"),
    ("string temperature", "/v1/chat/completions", chat(temperature="hot"), 400, "invalid_value", "temperature"),
    ("empty messages", "/v1/chat/completions", chat(messages=[]), 400, "invalid_value", "messages"),
    ("messages not a list", "/v1/chat/completions", chat(messages="hi"), 400, "invalid_value", "messages"),
    ("empty content", "/v1/chat/completions", chat(messages=[{"role": "user", "content": "  "}]), 400, "empty_prompt",
     "messages"),
    # Any role name the template renders is taken (custom roles, as vLLM); not a malformed one.
    ("bad role", "/v1/chat/completions", chat(messages=[{"role": "wiz ard", "content": "x"}]), 400, "invalid_value",
     "messages[0].role"),
    ("tool message without its call", "/v1/chat/completions", chat(messages=[{"role": "tool", "content": "x"}]), 400,
     "invalid_value", "messages[0].tool_call_id"),
    ("image content", "/v1/chat/completions",
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400,
     "unsupported_content", "messages[0].content"),
    ("n above SLUICE_MAX_N", "/v1/chat/completions", chat(n=99), 400, "invalid_value", "n"),
    ("n of 0", "/v1/completions", {"model": TEST_MODEL_NAME, "prompt": "x", "n": 0}, 400, "invalid_value", "n"),
    ("too many stops", "/v1/chat/completions", chat(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("tool without a function", "/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, "invalid_value",
     "tools[0]"),
    ("unknown named tool", "/v1/chat/completions",
     chat(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), 400, "invalid_value", "tool_choice"),
    ("unknown parameter", "/v1/chat/completions", chat(temprature=0.5), 400, "unsupported_parameter", "temprature"),
    ("beam search", "/v1/chat/completions", chat(use_beam_search=True), 400, "unsupported_parameter",
     "use_beam_search"),
    ("beam search off is fine, a typo is not", "/v1/completions",
     {"model": TEST_MODEL_NAME, "prompt": "x", "use_beam_search": False, "bestof": 2}, 400, "unsupported_parameter",
     "bestof"),
    ("invalid schema", "/v1/chat/completions",
     chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}), 400,
     "invalid_value", "response_format.json_schema.schema"),
    ("invalid regex", "/v1/completions", {"model": TEST_MODEL_NAME, "prompt": "x", "guided_regex": "a(b"}, 400,
     "invalid_value", "guided_regex"),
    ("two constraints", "/v1/chat/completions", chat(guided_choice=["a"], response_format={"type": "json_object"}),
     400, "invalid_value", "response_format"),
    ("logit_bias out of range", "/v1/chat/completions", chat(logit_bias={"5": 101}), 400, "invalid_value",
     "logit_bias"),
    ("logit_bias outside vocab", "/v1/chat/completions", chat(logit_bias={"99999999": 1}), 400, "invalid_value",
     "logit_bias"),
    ("stop_token_ids outside vocab", "/v1/completions",
     {"model": TEST_MODEL_NAME, "prompt": "x", "stop_token_ids": [10**6]}, 400, "invalid_value", "stop_token_ids"),
    ("min_tokens above max_tokens", "/v1/chat/completions", chat(min_tokens=9), 400, "invalid_value", "min_tokens"),
    ("presence_penalty out of range", "/v1/chat/completions", chat(presence_penalty=3), 400, "invalid_value",
     "presence_penalty"),
    ("missing model", "/v1/chat/completions", {"messages": MESSAGES}, 400, "invalid_value", "model"),
    ("unknown model", "/v1/chat/completions", chat(model="gpt-17"), 404, "model_not_found", "model"),
    ("body not an object", "/v1/chat/completions", [1, 2], 400, "invalid_json", None),
    ("empty prompt", "/v1/completions", {"model": TEST_MODEL_NAME, "prompt": ""}, 400, "empty_prompt", "prompt"),
    ("NUL in prompt", "/v1/completions", {"model": TEST_MODEL_NAME, "prompt": "a\u0000b"}, 400, "invalid_value", "prompt"),
    ("NUL in message", "/v1/chat/completions", chat(messages=[{"role": "user", "content": "x\u0000"}]), 400,
     "invalid_value", "messages[0].content"),
    ("prompt batch too big", "/v1/completions", {"model": TEST_MODEL_NAME, "prompt": ["a"] * 65}, 400, "invalid_value",
     "prompt"),
    ("prompt ids outside vocab", "/v1/completions", {"model": TEST_MODEL_NAME, "prompt": [1, 10**9]}, 400,
     "invalid_value", "prompt"),
    ("stream_options without stream", "/v1/chat/completions", chat(stream_options={"include_usage": True}), 400,
     "invalid_value", "stream_options"),
    ("top_logprobs without logprobs", "/v1/chat/completions", chat(top_logprobs=3), 400, "invalid_value",
     "top_logprobs"),
    ("top_logprobs above 20", "/v1/chat/completions", chat(logprobs=True, top_logprobs=21), 400, "invalid_value",
     "top_logprobs"),
    ("job both inputs", "/api/v1/jobs", {"prompt": "a", "messages": MESSAGES}, 400, "invalid_value", None),
    ("job bad stop", "/api/v1/jobs", {"prompt": "a", "stop": [""]}, 400, "invalid_value", "stop"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "code", "param"), CASES, ids=[c[0] for c in CASES]
)
def test_invalid_requests(
    live: Live,
    api_user: ApiUser,
    name: str,
    path: str,
    body: Any,
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    before = Job.objects.count()
    response = httpx.post(f"{live.base_url}{path}", json=body, headers=api_user.headers, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"] == code
    assert error["param"] == param
    assert Job.objects.count() == before  # nothing was queued


TGI_CASES: list[tuple[str, str, Any, int, str]] = [
    # (name, path, body, status, error_type): TGI's envelope, {"error": str, "error_type": str}
    ("bad max_new_tokens", "/generate", {"inputs": "x", "parameters": {"max_new_tokens": -1}}, 422, "validation"),
    ("empty inputs", "/generate", {"inputs": " ", "parameters": {}}, 422, "validation"),
    ("top_p 1", "/generate", {"inputs": "x", "parameters": {"top_p": 1.0}}, 422, "validation"),
    ("invalid grammar", "/", {"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "a(b"}}}, 422,
     "validation"),
    ("watermark", "/generate", {"inputs": "x", "parameters": {"watermark": True}}, 422, "validation"),
    ("unknown parameter", "/generate", {"inputs": "x", "parameters": {"max_new_token": 3}}, 422, "validation"),
    ("typical_p 1", "/generate", {"inputs": "x", "parameters": {"typical_p": 1.0}}, 422, "validation"),
    ("stream bad truncate", "/generate_stream", {"inputs": "x", "parameters": {"truncate": 0}}, 422, "validation"),
    ("body not an object", "/generate", [1], 422, "validation"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "error_type"), TGI_CASES, ids=[c[0] for c in TGI_CASES]
)
def test_invalid_tgi_requests(
    live: Live, api_user: ApiUser, name: str, path: str, body: Any, status: int, error_type: str
) -> None:
    before = Job.objects.count()
    response = httpx.post(f"{live.base_url}{path}", json=body, headers=api_user.headers, timeout=30)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error", "error_type"}
    assert isinstance(payload["error"], str) and payload["error"]
    assert payload["error_type"] == error_type
    assert Job.objects.count() == before


def test_malformed_json(live: Live, api_user: ApiUser) -> None:
    response = httpx.post(
        f"{live.base_url}/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={**api_user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_authentication_errors(live: Live) -> None:
    url = f"{live.base_url}/v1/chat/completions"
    missing = httpx.post(url, json=chat())
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = httpx.post(url, json=chat(), headers={"Authorization": "Bearer sk-sl-not-a-key"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert "not-a-key" not in wrong.text  # a key is never echoed in full
    scheme = httpx.post(url, json=chat(), headers={"Authorization": "Basic abc"})
    assert scheme.status_code == 401


def test_revoked_key(live: Live, api_user: ApiUser) -> None:
    from gateway.models import ApiKey
    from gateway.services import apikey_revoke

    apikey_revoke(api_key=ApiKey.objects.get(user=api_user.user))
    response = httpx.get(f"{live.base_url}/v1/models", headers=api_user.headers)
    assert response.status_code == 401


def test_unknown_url_and_method(live: Live, api_user: ApiUser) -> None:
    unknown = httpx.get(f"{live.base_url}/v1/nothing-here", headers=api_user.headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"
    wrong_method = httpx.get(f"{live.base_url}/v1/chat/completions", headers=api_user.headers)
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()
