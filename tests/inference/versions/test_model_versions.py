"""Model versions end to end: hot switch under load, automatic canary rollback, circuit
breaker with fallback, and the TGI backend against another Sluice's /generate_stream
(including that server going away mid-stream).

A dedicated worker serves the names "versioned" and "remote" (SLUICE_WORKER_MODELS), with
small health thresholds; requests go through the shared live web server.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.processes import ServerProcess, free_port, wait_until, web_process
from inference.core.redis import get_redis
from inference.models import EventKind, Job, JobStatus, ModelVersion, ModelVersionEvent, VersionStatus
from inference.versions.lifecycle import version_activate, version_retire
from tests.conftest import ApiUser, Live, child_env
from tests.support.versions import (
    REMOTE,
    broken_model_dir,
    complete,
    create,
    heartbeat_versions,
    job_of,
    loaded,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_hot_switch_under_load(
    live: Live,
    clean_versions: None,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
    random_model_dir: Path,
) -> None:
    v1 = create("v1", demo_model_dir)
    loaded(v1)
    users = [make_api_user() for _ in range(3)]
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def traffic(user: ApiUser) -> None:
        while not stop.is_set():
            sent = time.monotonic()  # routing happens when the request arrives
            response = complete(live, user)
            job_id = (
                response.json()["id"].removeprefix("cmpl-") if response.status_code == 200 else response.text
            )
            results.append((sent, response.status_code, job_id))

    threads = [threading.Thread(target=traffic, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: len(results) >= 10 and time.monotonic() - results[0][0] > 3,
            timeout=60,
            what="traffic on v1",
        )
        v2 = create("v2", random_model_dir, status=VersionStatus.DRAFT)
        # Every process sees the change at once (the registry's generation): what was sent
        # before the switch began went to v1 (what it routed before seeing it); from the
        # activation on, either may serve.
        switched = time.monotonic()
        version_activate(version=v2, status=VersionStatus.STABLE, actor="test")
        version_retire(version=v1, actor="test")
        wait_until(
            lambda: sum(1 for t, _, _ in results if t > switched + 6) >= 10, timeout=90, what="traffic on v2"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    failures = [r for r in results if r[1] != 200]
    assert failures == [], failures[:3]
    versions = {job_id: version for job_id, version in Job.objects.values_list("id", "model_version__label")}
    # Routed as the request arrives, a moment after it was sent: a second's margin.
    before = [versions[uuid.UUID(j)] for t, _, j in results if t < switched - 1]
    after = [versions[uuid.UUID(j)] for t, _, j in results if t > switched + 3]
    assert set(before) == {"v1"} and after and set(after) == {"v2"}
    # v1 finished its jobs and was unloaded; v2 serves.
    wait_until(lambda: "versioned@v1" not in heartbeat_versions(), timeout=30, what="v1 to be unloaded")
    assert ModelVersionEvent.objects.filter(version=v1, kind=EventKind.UNLOADED).exists()
    assert ModelVersionEvent.objects.filter(version=v2, kind=EventKind.LOADED).exists()


def test_failing_canary_is_rolled_back_automatically(
    live: Live,
    clean_versions: None,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
    tmp_path: Path,
) -> None:
    stable = create("stable", demo_model_dir)
    canary = create(
        "canary", broken_model_dir(tmp_path, demo_model_dir), status=VersionStatus.CANARY, weight=50
    )
    loaded(stable)
    loaded(canary, ok=False)
    assert heartbeat_versions()["versioned@canary"]["error"]  # loading failed: its jobs fail fast
    users = [make_api_user() for _ in range(24)]
    statuses = {u.user.username: complete(live, u).status_code for u in users}
    failed = [name for name, code in statuses.items() if code != 200]
    assert 4 <= len(failed) <= 20  # about half the users were routed to the canary
    wait_until(
        lambda: ModelVersion.objects.get(pk=canary.pk).traffic_weight == 0, timeout=15, what="the rollback"
    )
    event = ModelVersionEvent.objects.get(version=canary, kind=EventKind.ROLLED_BACK)
    assert "error rate" in event.reason and event.actor == "auto"
    time.sleep(2.5)  # the web process's registry cache
    again = [complete(live, u) for u in users if u.user.username in failed]
    assert all(r.status_code == 200 for r in again)
    assert {job_of(r).model_version_id for r in again} == {stable.pk}


def test_circuit_breaker_sends_traffic_to_the_fallback(
    live: Live,
    clean_versions: None,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
    tmp_path: Path,
) -> None:
    fallback = create("fallback", demo_model_dir, weight=0)
    broken = create("broken", broken_model_dir(tmp_path, demo_model_dir), fallback=fallback)
    loaded(fallback)
    loaded(broken, ok=False)
    user = make_api_user()
    first = [complete(live, user).status_code for _ in range(4)]
    assert first == [500] * 4
    wait_until(
        lambda: bool(get_redis().exists("sluice:breaker:versioned@broken")), timeout=10, what="the breaker"
    )
    # The worker opens the breaker in Redis, then records the event: await the row too.
    wait_until(
        lambda: ModelVersionEvent.objects.filter(version=broken, kind=EventKind.BREAKER_OPEN).exists(),
        timeout=30,
        what="the breaker_open event",
    )
    after = complete(live, user)
    assert after.status_code == 200 and job_of(after).model_version_id == fallback.pk


# -- the TGI backend, against another Sluice ---------------------------------------------------


@pytest.fixture(scope="module")
def upstream(
    live: Live, test_database_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    """A second Sluice web process (same database, Redis and model worker as `live`): the TGI
    server that "remote" versions talk to. The last test of this module kills it."""
    log_dir = tmp_path_factory.mktemp("upstream-logs")
    port = free_port()
    web = web_process(child_env(test_database_url, demo_model_dir), port, log_dir).start()
    wait_until(lambda: _up(f"http://127.0.0.1:{port}"), timeout=60, what="the upstream web server")
    yield f"http://127.0.0.1:{port}", web
    web.stop()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def submit_long(live: Live, client: ApiUser, *, max_tokens: int) -> dict[str, Any]:
    """A long generation on the remote version, as a native job."""
    return dict(
        httpx.post(
            f"{live.base_url}/api/v1/jobs",
            json={"model": REMOTE, "prompt": "Once", "max_tokens": max_tokens, "ignore_eos": True},
            headers=client.headers,
        ).json()
    )


def remote_version(url: str, key: str, demo_model_dir: Path, label: str = "tgi") -> ModelVersion:
    return create(label, demo_model_dir, name=REMOTE, backend="tgi", url=url, api_key=key)


def test_tgi_backend_streams_and_cancels(
    live: Live,
    clean_versions: None,
    upstream: tuple[str, ServerProcess],
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    upstream_user, client = make_api_user(), make_api_user()
    version = remote_version(upstream[0], upstream_user.key, demo_model_dir)
    loaded(version)
    response = complete(live, client, model=REMOTE, max_tokens=12, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] <= 12
    job = job_of(response)
    assert job.model_version_id == version.pk and job.status == JobStatus.SUCCEEDED
    # The upstream ran it as a TGI job of its own.
    assert Job.objects.filter(user=upstream_user.user, source="tgi", status=JobStatus.SUCCEEDED).count() == 1
    # Cancel mid-stream: the remote stream closes and the upstream job is cancelled too.
    submitted = submit_long(live, client, max_tokens=200)
    wait_until(
        lambda: Job.objects.get(id=submitted["id"]).status == JobStatus.RUNNING, timeout=20, what="start"
    )
    httpx.post(f"{live.base_url}/api/v1/jobs/{submitted['id']}/cancel", headers=client.headers)
    wait_until(lambda: Job.objects.get(id=submitted["id"]).is_terminal, timeout=20, what="the cancel")
    assert Job.objects.get(id=submitted["id"]).status == JobStatus.CANCELLED
    upstream_jobs = Job.objects.filter(user=upstream_user.user).order_by("-queued_at")
    wait_until(lambda: upstream_jobs.first().is_terminal, timeout=20, what="the upstream job to end")  # type: ignore[union-attr]


def test_tgi_backend_forwards_grammars_and_penalties_and_refuses_the_rest(
    live: Live,
    clean_versions: None,
    upstream: tuple[str, ServerProcess],
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    """A TGI upstream gets grammar, repetition_penalty, frequency_penalty, typical_p and
    top_n_tokens in TGI's form (its own job shows them); what TGI has no parameter for is
    refused by name before a job exists."""
    upstream_user, client = make_api_user(), make_api_user()
    loaded(remote_version(upstream[0], upstream_user.key, demo_model_dir))
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response = httpx.post(
        f"{live.base_url}/v1/chat/completions",
        json={
            "model": REMOTE,
            "messages": [{"role": "user", "content": "Status?"}],
            "max_tokens": 20,
            "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
            "repetition_penalty": 1.3,
            "frequency_penalty": 0.5,
        },
        headers=client.headers,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"]) in ({"ok": True}, {"ok": False})
    there = Job.objects.filter(user=upstream_user.user, source="tgi").latest("queued_at").params
    assert there["structured"]["kind"] == "json" and json.loads(there["structured"]["value"]) == schema
    assert there["repetition_penalty"] == 1.3 and there["frequency_penalty"] == 0.5
    regex = complete(live, client, model=REMOTE, max_tokens=10, temperature=0, guided_regex="[0-9]{3}")
    assert regex.status_code == 200 and re.fullmatch("[0-9]{3}", regex.json()["choices"][0]["text"])
    before = Job.objects.count()
    for extra, param in (
        ({"logit_bias": {"5": 2}}, "logit_bias"),
        ({"min_tokens": 2}, "min_tokens"),
        ({"guided_choice": ["a", "b"]}, "response_format"),
    ):
        refused = complete(live, client, model=REMOTE, max_tokens=4, **extra)
        assert refused.status_code == 400, refused.text
        assert (
            refused.json()["error"]["param"] == param
            and refused.json()["error"]["code"] == "unsupported_parameter"
        )
    assert Job.objects.count() == before


def test_tgi_backend_retries_then_fails_clearly_when_nothing_listens(
    live: Live, clean_versions: None, make_api_user: Callable[..., ApiUser], demo_model_dir: Path
) -> None:
    version = remote_version(f"http://127.0.0.1:{free_port()}", "", demo_model_dir)
    loaded(version)
    client = make_api_user()
    started = time.monotonic()
    response = complete(live, client, model=REMOTE)
    elapsed = time.monotonic() - started
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert "after 3 attempt(s)" in message and "Connect" in message
    assert elapsed >= 0.6  # backoff 0.2 s, then 0.4 s


def test_tgi_server_going_away_mid_stream_fails_the_job_without_hanging(
    live: Live,
    clean_versions: None,
    upstream: tuple[str, ServerProcess],
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    url, web = upstream
    upstream_user, client = make_api_user(), make_api_user()
    version = remote_version(url, upstream_user.key, demo_model_dir, label="flaky")
    loaded(version)
    submitted = submit_long(live, client, max_tokens=480)
    stream = f"sluice:job:{{{submitted['id']}}}:events"

    # Freeze the upstream as soon as the first tokens arrive here, then kill it.
    def first_tokens() -> bool:
        entries: Any = get_redis().xrange(stream)
        return any(fields.get(b"t") == b"tok" for _, fields in entries)

    wait_until(first_tokens, timeout=30, interval=0.005, what="first tokens")
    assert web.process is not None
    web.process.send_signal(signal.SIGSTOP)  # no more bytes from it: a stream cut mid-way
    time.sleep(0.5)
    web.kill()
    started = time.monotonic()
    wait_until(lambda: Job.objects.get(id=submitted["id"]).is_terminal, timeout=20, what="the job to fail")
    job = Job.objects.get(id=submitted["id"])
    assert job.status == JobStatus.FAILED and time.monotonic() - started < 15
    assert "mid-stream" in job.error, job.error
