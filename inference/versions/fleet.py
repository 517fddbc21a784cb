"""The versions read API's view of the fleet: which workers hold which versions (their
heartbeats), and an openai version's upstream replicas with their health and load."""

from __future__ import annotations

from typing import Any

import redis

from inference.core.redis import get_redis
from inference.models import ModelVersion
from inference.versions.replicas import ReplicaState, read_replicas
from inference.worker.heartbeat import live_beats


def worker_heartbeats(client: redis.Redis | None = None) -> list[dict[str, Any]]:
    """The live workers' heartbeats (each expires SLUICE_HEARTBEAT_TTL_S after its last beat):
    which versions each holds, and its load. ``client``: a probe's own (short-timeout) client."""
    return list(live_beats(client or get_redis()).values())


def version_replicas(version: ModelVersion) -> list[ReplicaState]:
    """An openai version's replicas with their health and fleet-wide load (empty for others,
    or when Redis is unreachable)."""
    if version.backend != "openai" or not version.pk:
        return []
    urls = list(dict.fromkeys([u for u in [version.url, *version.replica_list] if u]))
    try:
        return read_replicas(get_redis(), f"{version.served_name}@{version.label}", urls)
    except Exception:
        return []
