"""Heartbeats through the one writer and the one reader, on the suite's real Valkey."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from inference.core.redis import get_redis
from inference.worker.heartbeat import (
    WORKERS_SEEN_KEY,
    beat_remove,
    beat_write,
    live_beats,
    seen_at,
    worker_key,
    workers_seen,
)

NAMES = ("hb-alpha", "hb-beta")


@pytest.fixture
def client() -> Iterator[object]:
    client = get_redis()
    yield client
    for name in NAMES:
        beat_remove(client, name)


def test_live_dead_and_gone_workers(client: object) -> None:
    now = time.time()
    for name in NAMES:
        beat_write(client, name, {"name": name, "ts": now, "versions": []}, ttl_s=30)
    beats = live_beats(client)
    assert {name: beats[name]["name"] for name in NAMES} == {name: name for name in NAMES}
    assert seen_at(client, "hb-alpha") == pytest.approx(now)
    # A worker whose beat expired (killed): seen, not live; shown as down with its last beat.
    get_redis().delete(worker_key("hb-beta"))
    assert "hb-beta" not in live_beats(client)
    seen = dict(workers_seen(client))
    assert seen["hb-beta"] is None and seen["hb-alpha"] is not None
    # One that stopped cleanly is gone altogether.
    beat_remove(client, "hb-alpha")
    assert "hb-alpha" not in dict(workers_seen(client))
    assert get_redis().hget(WORKERS_SEEN_KEY, "hb-beta") is not None
