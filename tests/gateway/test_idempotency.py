"""Idempotency-Key on every submit route: the same key and body give the same job; another
body is a 409; a request that failed before its job existed can be retried under its key."""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any

import httpx
import openai
import pytest

from gateway.models import RateLimitPolicy, UserRateLimit
from inference.models import Job
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

CHAT: dict[str, Any] = {
    "model": TEST_MODEL_NAME,
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 6,
    "temperature": 0,
}


def post(live: Live, user: ApiUser, path: str, body: Any, key: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{live.base_url}{path}",
        json=body,
        headers={**user.headers, "Idempotency-Key": key},
        timeout=60,
        **kwargs,
    )


def test_same_key_same_job_on_every_route(live: Live, api_user: ApiUser) -> None:
    cases: list[tuple[str, dict[str, Any], Any]] = [
        ("/api/v1/jobs", {"prompt": "The river", "max_tokens": 5}, lambda r: r.json()["id"]),
        ("/v1/chat/completions", CHAT, lambda r: r.json()["id"]),
        ("/v1/completions", {"model": TEST_MODEL_NAME, "prompt": ["a", "b"], "max_tokens": 3}, lambda r: r.json()["id"]),
        ("/v1/responses", {"model": TEST_MODEL_NAME, "input": "Hi", "max_output_tokens": 4}, lambda r: r.json()["id"]),
        ("/generate", {"inputs": "The river", "parameters": {"max_new_tokens": 4, "details": True}},
         lambda r: r.json()["generated_text"]),
    ]  # fmt: skip
    for path, body, identity in cases:
        key = f"k-{uuid.uuid4()}"
        before = Job.objects.count()
        first = post(live, api_user, path, body, key)
        again = post(live, api_user, path, body, key)
        assert first.status_code == again.status_code and first.status_code in (200, 202), first.text
        assert identity(first) == identity(again), path
        made = Job.objects.count() - before
        assert made == (2 if path == "/v1/completions" else 1), path  # a batch of two prompts: two jobs
        other = post(
            live,
            api_user,
            path,
            # Another body under the same key (a valid one: unknown parameters are refused first).
            {**body, "max_tokens": 7} if "max_tokens" in body else {**body, "stream": False},
            key,
        )
        assert other.status_code == 409, (path, other.text)


def test_streams_replay_from_the_start(live: Live, api_user: ApiUser) -> None:
    key = f"k-{uuid.uuid4()}"
    sdk = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0)

    def streamed() -> tuple[str, str]:
        chunks = list(
            sdk.chat.completions.create(**CHAT, stream=True, extra_headers={"Idempotency-Key": key})
        )
        return chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    first, second = streamed(), streamed()
    assert first == second and first[1]


def test_racing_retries_make_one_job(live: Live, api_user: ApiUser) -> None:
    key = f"k-{uuid.uuid4()}"
    body = {"prompt": "Once", "max_tokens": 4}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: post(live, api_user, "/api/v1/jobs", body, key).json()["id"], range(8)))
    assert len(ids) == 1


def test_a_refused_request_leaves_the_key_free(live: Live, make_api_user: Any) -> None:
    user = make_api_user()
    RateLimitPolicy.objects.create(name="idem-1rpm", requests_per_minute=1, burst=1, max_queue_wait_s=0)
    UserRateLimit.objects.create(user=user.user, policy=RateLimitPolicy.objects.get(name="idem-1rpm"))
    post(live, user, "/api/v1/jobs", {"prompt": "a", "max_tokens": 2}, f"k-{uuid.uuid4()}")
    key = f"k-{uuid.uuid4()}"
    refused = post(live, user, "/api/v1/jobs", {"prompt": "b", "max_tokens": 2}, key)
    assert refused.status_code == 429
    invalid = post(live, user, "/api/v1/jobs", {"prompt": "b", "max_tokens": -1}, f"k-{uuid.uuid4()}")
    assert invalid.status_code == 400
    # Not a 409: the refused request made no job, so its key may be used again.
    again = post(live, user, "/api/v1/jobs", {"prompt": "b", "max_tokens": 2}, key)
    assert again.status_code in (202, 429)
    assert again.status_code != 409
    bad_key = post(live, user, "/api/v1/jobs", {"prompt": "b"}, "has spaces in it")
    assert bad_key.status_code == 400 and bad_key.json()["error"]["param"] == "Idempotency-Key"
