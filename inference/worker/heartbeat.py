"""Workers' heartbeats in Redis: the one module that writes them and the one reader everyone
calls (readiness, the admin, the console, routing by affinity, /metrics).

A beat is a JSON object under ``sluice:worker:<name>`` that expires SLUICE_HEARTBEAT_TTL_S
after the last write; the workers seen in the last day are kept in a hash (name -> last beat
time), so that a worker whose beat expired shows as down and readers never SCAN the keyspace.
"""

from __future__ import annotations

import json
from typing import Any

from inference.core.keys import WORKER_PREFIX, WORKERS_SEEN_KEY

PREFIX = WORKER_PREFIX
WORKERS_SEEN_TTL_S = 24 * 3600
HEARTBEAT_INTERVAL_S = 2.0  # the console shows live load from the heartbeats


def worker_key(name: str) -> str:
    return f"{PREFIX}{name}"


def beat_write(client: Any, name: str, payload: dict[str, Any], *, ttl_s: int) -> None:
    client.set(worker_key(name), json.dumps(payload), ex=ttl_s)
    # Workers seen lately, with their last beat: a worker whose heartbeat expired shows as down
    # (sluice_worker_up 0, the console's dead workers) for a day.
    client.hset(WORKERS_SEEN_KEY, name, payload["ts"])
    client.expire(WORKERS_SEEN_KEY, WORKERS_SEEN_TTL_S)


def beat_remove(client: Any, name: str) -> None:
    """A worker that stops cleanly: gone, and not a dead worker."""
    client.delete(worker_key(name))
    client.hdel(WORKERS_SEEN_KEY, name)


def _seen_names(client: Any) -> list[str]:
    raw: Any = client.hkeys(WORKERS_SEEN_KEY)
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in raw or ())


def live_beats(client: Any) -> dict[str, dict[str, Any]]:
    """The live workers' heartbeats by name (seen lately, beat not expired): one HKEYS and one
    pipelined GET per worker, whatever the size of the keyspace."""
    return _beats_of(client, _seen_names(client))


def _beats_of(client: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    if not names:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(worker_key(name))
    return {name: json.loads(beat) for name, beat in zip(names, pipe.execute(), strict=True) if beat}


def workers_seen(client: Any) -> list[tuple[str, dict[str, Any] | None]]:
    """Every worker that beat in the last day, with its last heartbeat (``None``: expired, the
    worker is down), by name."""
    names = _seen_names(client)
    beats = _beats_of(client, names)
    return sorted((name, beats.get(name)) for name in names)


def seen_at(client: Any, worker: str) -> float:
    value: Any = client.hget(WORKERS_SEEN_KEY, worker)
    return float(value) if value else 0.0
