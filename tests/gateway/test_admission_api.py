"""Admission through the live server: headers, quota, refusals (429/503), waiting with queue
events, refunds and live policy edits, on REST, SSE, TGI and WebSocket alike.

`idle` is a second web process (no worker consumes its model's queue, so admitted jobs stay
in flight) with a model capacity of 2 and a queue cap of 3, for the capacity cases.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from config.processes import free_port, wait_until, web_process
from gateway.models import RateLimitPolicy, UserRateLimit
from inference.admission.ratelimit import PREFIX
from inference.core.redis import get_redis
from inference.jobs.cancel import job_cancel
from inference.models import Job
from inference.prompts import ModelInfo
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live, child_env
from tests.support.load import stream_many

pytestmark = pytest.mark.e2e

IDLE_MODEL = "sluice-idle"


def policy(name: str, **limits: Any) -> RateLimitPolicy:
    values = {
        "requests_per_minute": 0,
        "tokens_per_minute": 0,
        "max_concurrent": 0,
        "daily_token_budget": 0,
        "max_queue_wait_s": 0.0,
        "priority": 0,
        "burst": 1.0,
    }
    values.update(limits)
    return RateLimitPolicy.objects.create(name=name, **values)


@pytest.fixture
def limited_user(make_api_user: Callable[..., ApiUser]) -> Callable[..., ApiUser]:
    counter = iter(range(1000))

    def make(**limits: Any) -> ApiUser:
        user = make_api_user()
        UserRateLimit.objects.create(
            user=user.user, policy=policy(f"p-{user.user.username}-{next(counter)}", **limits)
        )
        return user

    return make


def chat(base_url: str, user: ApiUser, **body: Any) -> httpx.Response:
    payload = {"model": TEST_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    payload.update(body)
    return httpx.post(f"{base_url}/v1/chat/completions", json=payload, headers=user.headers, timeout=60)


def cost_of_chat(model_dir: Path, max_tokens: int) -> int:
    info = ModelInfo(TEST_MODEL_NAME, model_dir)
    return len(info.chat_prompt_ids([{"role": "user", "content": "Hi"}])) + max_tokens


def quota(base_url: str, user: ApiUser) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/api/v1/me/quota", headers=user.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# -- headers and quota -------------------------------------------------------------------


def test_headers_track_the_buckets(
    live: Live, limited_user: Callable[..., ApiUser], demo_model_dir: Path
) -> None:
    user = limited_user(requests_per_minute=100, tokens_per_minute=10_000)  # refills 1.7 requests/s
    cost = cost_of_chat(demo_model_dir, 4)
    first = chat(live.base_url, user)
    second = chat(live.base_url, user)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "100"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(first.headers["x-ratelimit-remaining-requests"]) == 99
    assert int(second.headers["x-ratelimit-remaining-requests"]) <= 99
    # Reservation at admission: prompt + max_tokens, before generation.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 10_000 - cost
    assert first.headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
    # Every response carries them, reads included.
    listed = httpx.get(f"{live.base_url}/api/v1/jobs", headers=user.headers)
    assert listed.headers["x-ratelimit-limit-requests"] == "100"
    body = quota(live.base_url, user)
    assert body["limits"]["requests_per_minute"] == 100 and body["limits"]["max_concurrent"] is None
    assert 97 <= body["remaining"]["requests"] <= 99
    assert body["usage"]["tokens_today"] > 0 and body["scope"] == "user"


def test_a_keys_own_policy_overrides_the_users(live: Live, make_api_user: Callable[..., ApiUser]) -> None:
    from gateway.services import apikey_create

    user = make_api_user()
    UserRateLimit.objects.create(user=user.user, policy=policy("user-level", requests_per_minute=50))
    own = apikey_create(user=user.user, policy=policy("key-level", requests_per_minute=7)).raw_key
    keyed = ApiUser(user=user.user, key=own)
    assert quota(live.base_url, user)["limits"]["requests_per_minute"] == 50
    assert quota(live.base_url, keyed)["limits"]["requests_per_minute"] == 7
    assert quota(live.base_url, keyed)["scope"] == "api_key"


# -- refusals -----------------------------------------------------------------------------


def test_rate_limited_request_gets_429_with_an_accurate_retry_after(
    live: Live, limited_user: Callable[..., ApiUser]
) -> None:
    user = limited_user(requests_per_minute=6, burst=1 / 6)  # 1 request per 10 s, no waiting
    assert chat(live.base_url, user).status_code == 200
    refused = chat(live.base_url, user)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "requests"  # OpenAI names the limit that was hit
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 9 <= int(refused.headers["Retry-After"]) <= 10
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # Same verdict on every entry point.
    tgi = httpx.post(f"{live.base_url}/generate", json={"inputs": "The"}, headers=user.headers)
    jobs = httpx.post(f"{live.base_url}/api/v1/jobs", json={"prompt": "The"}, headers=user.headers)
    assert tgi.status_code == jobs.status_code == 429
    assert "Retry-After" in tgi.headers and "Retry-After" in jobs.headers
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=user.key, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=TEST_MODEL_NAME, messages=[{"role": "user", "content": "x"}])
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=user.headers) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(json.dumps({"type": "request", "request_id": "r", "prompt": "The", "max_tokens": 2}))
        error = json.loads(ws.recv(timeout=10))
    assert error["type"] == "error" and error["error"]["code"] == "rate_limit_exceeded"
    assert error["error"]["retry_after_s"] >= 1 and error["request_id"] == "r"


def test_too_large_and_daily_budget(
    live: Live, limited_user: Callable[..., ApiUser], demo_model_dir: Path
) -> None:
    small = limited_user(tokens_per_minute=30)
    too_large = chat(live.base_url, small, max_tokens=64)
    assert too_large.status_code == 429 and too_large.json()["error"]["code"] == "request_too_large"
    cost = cost_of_chat(demo_model_dir, 4)
    budget = limited_user(daily_token_budget=cost)
    assert chat(live.base_url, budget, ignore_eos=True).status_code == 200
    spent = chat(live.base_url, budget)
    assert spent.status_code == 429 and spent.json()["error"]["code"] == "daily_budget_exceeded"
    assert int(spent.headers["Retry-After"]) <= 86400


@pytest.mark.slow
def test_token_limit_holds_for_concurrent_streams_from_two_processes(
    live: Live, limited_user: Callable[..., ApiUser], demo_model_dir: Path
) -> None:
    max_tokens = 8
    info = ModelInfo(TEST_MODEL_NAME, demo_model_dir)
    cost = len(info.completion_prompt_ids("The river")) + max_tokens
    # Room for exactly 5 requests; refilling one request's worth every 12 s.
    user = limited_user(tokens_per_minute=5 * cost)
    body = {
        "model": TEST_MODEL_NAME,
        "prompt": "The river",
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,  # every admitted request uses all it reserved: nothing is refunded
    }
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    with context.Pool(2) as pool:
        batches = pool.starmap(stream_many, [(live.base_url, user.key, body, 25, start_at)] * 2)
    statuses = Counter(status for batch in batches for status in batch)
    assert statuses == Counter({200: 5, 429: 45})


# -- refunds and live policy changes -------------------------------------------------------


def test_a_request_that_stops_early_refunds_its_unused_tokens(
    live: Live, limited_user: Callable[..., ApiUser]
) -> None:
    user = limited_user(tokens_per_minute=60, burst=100)  # 6000 tokens, refilling 1 a second
    response = httpx.post(
        f"{live.base_url}/api/v1/jobs",
        json={"prompt": "The river", "max_tokens": 500, "stop": ["e"]},
        headers=user.headers,
    )
    assert response.status_code == 202
    reserved_left = int(response.headers["x-ratelimit-remaining-tokens"])
    assert reserved_left <= 6000 - 500
    job_id = response.json()["id"]
    wait_until(lambda: Job.objects.get(id=job_id).is_terminal, timeout=30, what="the job to end")
    usage = Job.objects.get(id=job_id).usage
    assert usage is not None
    used = usage["total_tokens"]
    assert usage["completion_tokens"] < 500  # it stopped early
    wait_until(lambda: quota(live.base_url, user)["usage"]["concurrent"] == 0, timeout=5, what="release")
    after = quota(live.base_url, user)
    assert after["remaining"]["tokens"] >= 6000 - used - 1  # the unused tokens came back
    assert after["usage"]["tokens_today"] == used


def test_an_admin_edit_takes_effect_within_five_seconds(
    live: Live, limited_user: Callable[..., ApiUser]
) -> None:
    user = limited_user(requests_per_minute=1000)
    assert chat(live.base_url, user).status_code == 200
    edited = RateLimitPolicy.objects.get(user_assignments__user=user.user)
    edited.requests_per_minute = 2
    edited.burst = 0.5  # a bucket of one request, refilling one a minute
    edited.save()
    changed = time.monotonic()
    wait_until(
        lambda: quota(live.base_url, user)["limits"]["requests_per_minute"] == 2,
        timeout=5,
        what="the new limit",
    )
    assert time.monotonic() - changed <= 5
    statuses = [chat(live.base_url, user).status_code for _ in range(3)]
    assert statuses.count(429) >= 2  # at most one fits the shrunken bucket


# -- waiting ------------------------------------------------------------------------------


def test_streaming_request_waits_with_queue_events_then_runs(
    live: Live, limited_user: Callable[..., ApiUser]
) -> None:
    user = limited_user(requests_per_minute=60, burst=1 / 60, max_queue_wait_s=10)  # 1 request a second
    assert chat(live.base_url, user).status_code == 200
    started = time.monotonic()
    comments, chunks = [], []
    body = {
        "model": TEST_MODEL_NAME,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{live.base_url}/v1/chat/completions", json=body, headers=user.headers, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(": queue "):
                comments.append(json.loads(line.removeprefix(": queue ")))
            elif line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
    assert comments and comments[0]["position"] == 1 and comments[0]["waiting_for"] == "rate_limit"
    assert 0 < comments[0]["eta_s"] <= 1.0
    assert time.monotonic() - started >= 0.5
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # The openai SDK reads such a stream unchanged (it skips the comments).
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=user.key, max_retries=0)
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=TEST_MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
        )
        if c.choices
    )
    assert text


def test_websocket_request_waits_with_queue_messages(
    live: Live, limited_user: Callable[..., ApiUser]
) -> None:
    user = limited_user(requests_per_minute=60, burst=1 / 60, max_queue_wait_s=10)
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=user.headers) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        for request_id in ("a", "b"):
            ws.send(
                json.dumps({"type": "request", "request_id": request_id, "prompt": "The", "max_tokens": 2})
            )
        kinds: list[tuple[str, Any]] = []
        while sum(1 for kind, _ in kinds if kind == "end") < 2:
            message = json.loads(ws.recv(timeout=30))
            kinds.append((message["type"], message.get("request_id")))
    assert ("queue", "b") in kinds  # the second one waited for the bucket, with position/ETA
    assert kinds.index(("queue", "b")) < kinds.index(("job", "b"))


def test_non_streaming_request_waits_then_runs(live: Live, limited_user: Callable[..., ApiUser]) -> None:
    user = limited_user(requests_per_minute=60, burst=1 / 60, max_queue_wait_s=10)
    assert chat(live.base_url, user).status_code == 200
    started = time.monotonic()
    assert chat(live.base_url, user).status_code == 200
    assert time.monotonic() - started >= 0.5


# -- capacity, on a model nobody serves (jobs stay in flight) ------------------------------


@pytest.fixture(scope="module")
def idle(
    test_database_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    log_dir = tmp_path_factory.mktemp("idle-logs")
    env = child_env(
        test_database_url,
        demo_model_dir,
        SLUICE_MODEL_NAME=IDLE_MODEL,
        SLUICE_MODEL_CAPACITY="2",
        SLUICE_MODEL_QUEUE_CAP="3",
    )
    port = free_port()
    web = web_process(env, port, log_dir).start()
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, what="the idle web server")
        yield Live(
            base_url=base_url, ws_url=f"ws://127.0.0.1:{port}", web=web, worker=web, env=env, log_dir=log_dir
        )
    finally:
        web.stop()


@pytest.fixture
def idle_clean(idle: Live, transactional_db: None) -> Iterator[Live]:
    yield idle
    for job in Job.objects.filter(model=IDLE_MODEL, status__in=["queued", "running"]):
        job_cancel(job=job)  # releases its admission
    for key in get_redis().scan_iter(match=f"{PREFIX}:m:{IDLE_MODEL}:*"):
        get_redis().delete(key)


def idle_chat(idle: Live, user: ApiUser, **body: Any) -> httpx.Response:
    return chat(idle.base_url, user, model=IDLE_MODEL, **body)


def submit(idle: Live, user: ApiUser) -> httpx.Response:
    return httpx.post(
        f"{idle.base_url}/api/v1/jobs",
        json={"prompt": "The", "max_tokens": 2},
        headers=user.headers,
        timeout=30,
    )


def test_waiting_for_a_concurrency_slot_times_out_with_429(
    idle_clean: Live, limited_user: Callable[..., ApiUser]
) -> None:
    user = limited_user(max_concurrent=1, max_queue_wait_s=1.0)
    assert submit(idle_clean, user).status_code == 202  # holds the user's only slot
    started = time.monotonic()
    refused = submit(idle_clean, user)
    waited = time.monotonic() - started
    assert refused.status_code == 429 and 0.9 <= waited < 5
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1


def test_busy_model_makes_requests_wait_then_503_beyond_the_queue_cap(
    idle_clean: Live, limited_user: Callable[..., ApiUser]
) -> None:
    user = limited_user(max_queue_wait_s=30.0)
    impatient = limited_user(max_queue_wait_s=0.0)
    assert submit(idle_clean, user).status_code == 202
    assert submit(idle_clean, user).status_code == 202  # capacity (2) reached
    # A streaming request now waits in the model's room: it says so and where it stands.
    body = {"model": IDLE_MODEL, "prompt": "The", "max_tokens": 2, "stream": True}
    with httpx.stream(
        "POST", f"{idle_clean.base_url}/v1/completions", json=body, headers=user.headers, timeout=30
    ) as waiting:
        assert waiting.status_code == 200
        lines = waiting.iter_lines()
        first = next(line for line in lines if line.startswith(": queue "))
        event = json.loads(first.removeprefix(": queue "))
        assert event == {"position": 1, "eta_s": event["eta_s"], "waiting_for": "capacity"}
        # In flight 2 + waiting 1 = the queue cap (3): anyone else is turned away at once.
        started = time.monotonic()
        overloaded = submit(idle_clean, impatient)
        assert overloaded.status_code == 503 and time.monotonic() - started < 2
        error = overloaded.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "overloaded"  # OpenAI's names
        assert int(overloaded.headers["Retry-After"]) >= 1
    # The waiter went away: its place in the room is given back.
    from inference.admission.services import get_limiter

    # At once when the server sees the disconnect; at the latest when the waiter's TTL
    # (SLUICE_WAITER_TTL_S) lapses. A busy machine may take a while to get there.
    wait_until(lambda: get_limiter().model_load(IDLE_MODEL) == (2, 0), timeout=45, what="the room to empty")
