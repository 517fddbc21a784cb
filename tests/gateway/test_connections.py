"""Connection hygiene: no request, wait or stream keeps a pooled database connection.

A web process of its own with a pool of 4 connections (the default is 16), so that a leak
or a connection held across a wait shows in a few requests: each test checks that another
user is served at once meanwhile, and that the pool has nothing checked out afterwards
(``sluice_db_pool_connections{state="in_use"}`` on its /metrics).
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.processes import ServerProcess, free_port, wait_ready, wait_until, web_process
from gateway.models import RateLimitPolicy, UserRateLimit
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

POOL = 4
METRICS_TOKEN = "metrics-secret-for-tests"


@pytest.fixture(scope="module")
def small_pool(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        **live.env,
        "SLUICE_DB_POOL_MAX": str(POOL),
        "SLUICE_DB_POOL_TIMEOUT_S": "5",
        "SLUICE_METRICS_TOKEN": METRICS_TOKEN,
        "SLUICE_METRICS_ALLOWED_NETWORKS": "10.255.255.0/24",  # not loopback: the token is needed
        "SLUICE_MODEL_CAPACITY": "0",  # no waiting room: every job goes straight to the queue
        # Room for 120 queued jobs on top of any an earlier test left cancelling (the default
        # 16 x batch 8 = 128 answered 503 on a busy CI machine).
        "SLUICE_MODEL_QUEUE_CAP": "1000",
    }
    port = free_port()
    web: ServerProcess = web_process(env, port, tmp_path_factory.mktemp("small-pool")).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, [web])
        yield base
    finally:
        web.stop()


def in_use(base: str) -> int:
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10).text
    match = re.search(r'^sluice_db_pool_connections\{state="in_use"\} (\S+)$', text, re.MULTILINE)
    assert match, "the pool gauge is missing"
    return int(float(match.group(1)))


def served_quickly(base: str, user: ApiUser) -> float:
    started = time.monotonic()
    response = httpx.get(f"{base}/v1/models", headers=user.headers, timeout=30)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def test_metrics_need_the_token_off_the_allowed_networks(small_pool: str) -> None:
    assert httpx.get(f"{small_pool}/metrics").status_code == 403
    assert httpx.get(f"{small_pool}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = httpx.get(f"{small_pool}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert ok.status_code == 200 and "sluice_db_pool_connections" in ok.text
    assert not re.search(r"\{[^}]*\b(user|api_key|key)=", ok.text)  # series never name a user or key


def test_failed_and_abandoned_streams_give_their_connections_back(
    small_pool: str, make_api_user: Any
) -> None:
    alice, bob = make_api_user(), make_api_user()
    job = httpx.post(
        f"{small_pool}/api/v1/jobs", json={"prompt": "x", "max_tokens": 4}, headers=alice.headers
    ).json()
    # Out-of-range cursors (these once made the stream raise inside Django's handler, leaking
    # the connection the header lookup had opened), several times the pool's size.
    for _ in range(4 * POOL):
        response = httpx.get(
            f"{small_pool}/api/v1/jobs/{job['id']}/events",
            headers={**alice.headers, "Last-Event-ID": "99999999999999999999999-0"},
            timeout=30,
        )
        assert response.status_code == 400
    # Streams the client drops after the first chunk.
    body = {"model": TEST_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200,
            "stream": True, "ignore_eos": True}  # fmt: skip
    for _ in range(3 * POOL):
        with httpx.stream("POST", f"{small_pool}/v1/chat/completions", json=body, headers=alice.headers) as s:
            next(s.iter_lines())
    assert served_quickly(small_pool, bob) < 3
    wait_until(lambda: in_use(small_pool) == 0, timeout=30, what="every pooled connection to come back")


@pytest.fixture
def unserved(live: Live, demo_model_dir: Path, transactional_db: None) -> Iterator[str]:
    """A model no worker serves: a job for it holds its place (and its admission) until cancelled."""
    from inference.models import ModelVersion

    version = ModelVersion.objects.create(
        served_name="unserved", label="v1", path=str(demo_model_dir), status="stable"
    )
    yield version.served_name
    ModelVersion.objects.filter(pk=version.pk).delete()


def test_waiting_requests_and_followers_hold_no_connection(
    small_pool: str, make_api_user: Any, unserved: str
) -> None:
    alice, bob = make_api_user(), make_api_user()
    policy = RateLimitPolicy.objects.create(name="one-at-a-time", max_concurrent=1, max_queue_wait_s=60)
    UserRateLimit.objects.create(user=alice.user, policy=policy)
    wait_until(
        lambda: unserved in httpx.get(f"{small_pool}/v1/models", headers=bob.headers).text,
        timeout=30,
        what="the web server to see the unserved model",
    )
    # Alice's one slot, held by a job that waits in a queue nobody consumes.
    long = httpx.post(
        f"{small_pool}/api/v1/jobs", json={"model": unserved, "prompt": "x", "max_tokens": 4},
        headers=alice.headers, timeout=30,
    ).json()  # fmt: skip
    statuses: list[int] = []
    lock = threading.Lock()

    def waiting_chat() -> None:
        response = httpx.post(
            f"{small_pool}/v1/chat/completions",
            json={"model": TEST_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            headers=alice.headers,
            timeout=120,
        )
        with lock:
            statuses.append(response.status_code)

    def follower() -> None:
        with httpx.stream(
            "GET", f"{small_pool}/api/v1/jobs/{long['id']}/events", headers=alice.headers, timeout=120
        ) as stream:
            for line in stream.iter_lines():
                if line == "event: end":
                    break

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(waiting_chat) for _ in range(3 * POOL)]
        futures += [pool.submit(follower) for _ in range(2 * POOL)]
        # Everyone above waits (for alice's single slot, or for tokens): far more waiters than
        # connections, and bob is still served at once.
        time.sleep(1.0)
        assert sum(f.done() for f in futures) == 0  # all of them are still waiting
        for _ in range(5):
            assert served_quickly(small_pool, bob) < 3
        httpx.post(f"{small_pool}/api/v1/jobs/{long['id']}/cancel", headers=alice.headers)
        for future in futures:
            future.result(timeout=180)
    assert statuses == [200] * (3 * POOL)
    wait_until(lambda: in_use(small_pool) == 0, timeout=30, what="every pooled connection to come back")


def test_event_stream_accept_header_is_fine(live: Live, api_user: ApiUser) -> None:
    """What every browser EventSource sends: once a 406 from DRF's content negotiation."""
    headers = {**api_user.headers, "Accept": "text/event-stream"}
    chat = {
        "model": TEST_MODEL_NAME,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    with httpx.stream("POST", f"{live.base_url}/v1/chat/completions", json=chat, headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        assert list(response.iter_lines())[-2] == "data: [DONE]"
    with httpx.stream(
        "POST",
        f"{live.base_url}/generate_stream",
        json={"inputs": "x", "parameters": {"max_new_tokens": 3}},
        headers=headers,
    ) as response:
        assert response.status_code == 200 and any(
            '"generated_text":"' in line for line in response.iter_lines()
        )
    job = httpx.post(
        f"{live.base_url}/api/v1/jobs", json={"prompt": "x", "max_tokens": 3}, headers=api_user.headers
    )
    with httpx.stream(
        "GET", f"{live.base_url}/api/v1/jobs/{job.json()['id']}/events", headers=headers
    ) as response:
        assert response.status_code == 200 and "event: end" in list(response.iter_lines())
    # An error on such a route is still JSON, in the route's envelope.
    bad = httpx.post(f"{live.base_url}/v1/chat/completions", json={**chat, "model": "nope"}, headers=headers)
    assert bad.status_code == 404 and bad.headers["content-type"].startswith("application/json")
    assert bad.json()["error"]["code"] == "model_not_found"


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from config.env import BASE_DIR

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": "x" * 20 + "-a-long-random-secret-key-for-this-check-only",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("debug", ["", "1"])
def test_check_deploy_is_clean_with_the_settings_make_run_uses(tmp_path: Path, debug: str) -> None:
    """`make run` is production-shaped: DEBUG off and a secret key of its own (plain HTTP on a
    loopback address, so the four HTTPS checks are silenced there and only there); debug is an
    explicit opt-in, which check --deploy names."""
    import os
    import subprocess
    import sys

    from config.env import BASE_DIR

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SLUICE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.local", SLUICE_VAR_DIR=str(tmp_path), SLUICE_DEBUG=debug
    )
    check = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    result = subprocess.run(
        check, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if debug:
        assert result.returncode != 0 and "security.W018" in result.stderr, result.stdout + result.stderr
        return
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (4 silenced)" in result.stdout
    # Bound to an address other machines reach, the HTTPS checks speak again.
    exposed = subprocess.run(
        check, cwd=BASE_DIR, env={**env, "SLUICE_HOST": "192.0.2.10"}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert exposed.returncode != 0 and "security.W008" in exposed.stderr


def test_more_concurrent_streams_than_a_redis_pool_holds(
    small_pool: str, api_user: ApiUser, unserved: str
) -> None:
    """Each open stream blocks in its own XREAD: with redis-py's default pool (100 connections)
    the 101st concurrent stream was cut mid-body (the bench saw 156 of 256 cut at c128)."""
    streams = 120
    wide_open = RateLimitPolicy.objects.create(
        name="wide-open", requests_per_minute=0, tokens_per_minute=0, max_concurrent=0, max_queue_wait_s=0
    )
    UserRateLimit.objects.create(user=api_user.user, policy=wide_open)
    wait_until(
        lambda: unserved in httpx.get(f"{small_pool}/v1/models", headers=api_user.headers).text,
        timeout=30,
        what="the web server to see the unserved model",
    )

    # Jobs that wait in a queue nobody consumes: their followers all block in XREAD at once.
    def submit() -> str:
        response = httpx.post(
            f"{small_pool}/api/v1/jobs",
            json={"model": unserved, "prompt": "x", "max_tokens": 8},
            headers=api_user.headers,
            timeout=60,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    jobs = [submit() for _ in range(streams)]
    opened = threading.Barrier(streams, timeout=120)

    def follow(job_id: str) -> str:
        with httpx.stream(
            "GET", f"{small_pool}/api/v1/jobs/{job_id}/events", headers=api_user.headers, timeout=120
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            next(lines)  # the first event: every stream is open before any is read to its end
            if opened.wait() == 0:
                time.sleep(2)  # all of them blocked in XREAD for a while
                for other in jobs:
                    httpx.post(
                        f"{small_pool}/api/v1/jobs/{other}/cancel", headers=api_user.headers, timeout=60
                    )
            last = ""
            for line in lines:
                if line.startswith("event: "):
                    last = line
            return last

    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        ends = list(pool.map(follow, jobs))
    assert ends == ["event: end"] * streams
