"""Replica choice and health (inference/versions/replicas.py) against the suite's real Redis: load is
summed over workers, a dead worker's load expires, a replica's breaker opens, goes half-open
for one trial at a time and closes on success; the upstream key from a variable or a file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.processes import wait_until
from inference.core.redis import get_redis
from inference.versions.replicas import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    NoReplica,
    ReplicaPool,
    read_replicas,
    resolve_api_key,
)

A, B = "http://a.test:8000", "http://b.test:8000"


@pytest.fixture
def version() -> Iterator[str]:
    key = f"up-{uuid.uuid4().hex[:8]}@v1"
    yield key
    for found in get_redis().scan_iter(match=f"sluice:upstream:{key}*"):
        get_redis().delete(found)
    get_redis().hdel("sluice:upstream:versions", key)


def pool(version: str, worker: str, urls: list[str] | None = None, **options: float) -> ReplicaPool:
    return ReplicaPool(version, urls or [A, B], worker=worker, client=get_redis, **options)  # type: ignore[arg-type]


def test_the_least_loaded_replica_over_every_worker_takes_the_next_request(version: str) -> None:
    one, two = pool(version, "w1"), pool(version, "w2")
    first = one.acquire(prompt_tokens=100, max_tokens=100)
    # Another worker sees the first one's load: the other replica is now the least loaded.
    second = two.acquire(prompt_tokens=10, max_tokens=10)
    assert {first.url, second.url} == {A, B}
    states = {s.url: s for s in read_replicas(get_redis(), version, [A, B])}
    assert states[first.url].outstanding_tokens == 200 and states[second.url].outstanding_tokens == 20
    # Prefill done: only the generation is outstanding; the third request goes to the lighter one.
    one.prefilled(first)
    third = two.acquire(prompt_tokens=150, max_tokens=0)
    assert third.url == second.url  # 20 < 100
    for lease, owner in ((first, one), (second, two), (third, two)):
        owner.release(lease)
    assert all(
        s.outstanding_tokens == 0 and s.outstanding_requests == 0
        for s in read_replicas(get_redis(), version, [A, B])
    )


def test_a_dead_workers_load_expires(version: str) -> None:
    dead = pool(version, "dead", load_ttl_s=1)
    dead.acquire(prompt_tokens=500, max_tokens=500)  # never released: the worker "dies"
    assert sum(s.outstanding_tokens for s in read_replicas(get_redis(), version, [A, B])) == 1000
    wait_until(
        lambda: sum(s.outstanding_tokens for s in read_replicas(get_redis(), version, [A, B])) == 0,
        timeout=10,
        what="the dead worker's load to expire",
    )
    assert b"dead" not in get_redis().smembers(f"sluice:upstream:{version}:workers")


def test_a_failing_replica_leaves_rotation_then_comes_back_through_one_trial(version: str) -> None:
    one = pool(version, "w1", [A], failures=2, cooldown_s=0.5)
    one.failed(A, "ConnectError: refused")
    assert read_replicas(get_redis(), version, [A])[0].state == CLOSED  # one failure is not enough
    one.failed(A, "ConnectError: refused")
    state = read_replicas(get_redis(), version, [A])[0]
    assert state.state == OPEN and state.error == "ConnectError: refused" and state.healthy == 0.0
    with pytest.raises(NoReplica, match="no replica"):
        one.acquire(prompt_tokens=1, max_tokens=1)
    wait_until(
        lambda: read_replicas(get_redis(), version, [A])[0].state == HALF_OPEN, timeout=10, what="half-open"
    )
    trial = one.acquire(prompt_tokens=1, max_tokens=1)
    assert trial.trial and trial.url == A
    # One trial at a time, fleet-wide.
    with pytest.raises(NoReplica):
        pool(version, "w2", [A]).acquire(prompt_tokens=1, max_tokens=1)
    one.release(trial)
    one.succeeded(A)
    assert read_replicas(get_redis(), version, [A])[0].state == CLOSED
    assert not one.acquire(prompt_tokens=1, max_tokens=1).trial


def test_a_failed_trial_goes_straight_back_out(version: str) -> None:
    one = pool(version, "w1", [A], failures=3, cooldown_s=0.3)
    for _ in range(3):
        one.failed(A, "ReadTimeout")
    wait_until(
        lambda: read_replicas(get_redis(), version, [A])[0].state == HALF_OPEN, timeout=10, what="half-open"
    )
    trial = one.acquire(prompt_tokens=1, max_tokens=1)
    one.release(trial)
    one.failed(A, "ReadTimeout")
    assert read_replicas(get_redis(), version, [A])[0].state == OPEN


def test_the_upstream_key_comes_from_a_variable_or_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    assert resolve_api_key("plain", "", {}) == "plain"
    assert resolve_api_key("plain", "UP_KEY", {"UP_KEY": "sk-env"}) == "sk-env"
    assert resolve_api_key("plain", "UP_KEY", {"UP_KEY_FILE": str(secret)}) == "sk-from-file"
    assert resolve_api_key("", "UP_KEY_FILE", {"UP_KEY_FILE": str(secret)}) == "sk-from-file"
    with pytest.raises(ValueError, match="UP_KEY"):
        resolve_api_key("plain", "UP_KEY", {})
