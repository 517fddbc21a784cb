"""Session affinity: a conversation's next turn goes to the worker whose prefix cache holds it.

Workers pull jobs from their version's shared queue (the default: whoever is free takes the
next job, so load balances itself). Beside it each worker consumes a queue of its own per
version (``<version queue>.w.<worker>``). A job that continues something a worker ran before
(a chat session's next turn, a Responses ``previous_response_id``) is published to that
worker's own queue, where the KV of its whole history is already in the prefix cache, unless
that worker carries more than ``SLUICE_AFFINITY_LOAD_GAP`` sequences over the least-busy
worker of the version (``busy``) or has no heartbeat for the version (``gone``): then it goes
to the shared queue like any other job. A job pinned to a worker that dies before taking it is
moved to the shared queue by the reconciler (`affinity_reconcile`).

Only local versions with a prefix cache are placed this way: remote engines keep their own
caches and a version without a cache has nothing to be near.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.conf import settings

from inference.core.broker import celery_queue_keys
from inference.core.keys import group_key
from inference.core.redis import get_redis
from inference.jobs.publish import job_publish, job_queue
from inference.models import Job
from inference.observability.recording import fleet
from inference.versions.registry import SETTINGS_LABEL, ServedModel, version_by_id
from inference.worker.heartbeat import live_beats

logger = logging.getLogger(__name__)


class Affinity(StrEnum):
    NEW = "new"  # nothing before it ran anywhere: the shared queue
    PINNED = "pinned"  # the worker that ran the turn before
    BUSY = "busy"  # that worker was too far above the least-busy one: the shared queue
    GONE = "gone"  # that worker had no heartbeat for the version: the shared queue
    GROUP = "group"  # a choice of an n > 1 request: with its siblings, on the least-busy worker


@dataclass(frozen=True)
class Placement:
    queue: str
    worker: str  # "" : the shared queue
    affinity: Affinity | None  # None: the version is not placed by affinity


def affinity_queue(queue: str, worker: str) -> str:
    """A worker's own queue beside a version's shared ``queue``."""
    return f"{queue}.w.{worker}"


def applies(model: ServedModel) -> bool:
    return bool(settings.SLUICE_AFFINITY) and model.backend == "local" and model.prefix_cache_bytes > 0


def preferred_worker(
    *, model: ServedModel, session_id: uuid.UUID | str | None, previous_id: uuid.UUID | str | None
) -> str | None:
    """The worker that ran the turn this job continues, on the same version (None: none)."""
    if previous_id is not None:
        row = Job.objects.filter(id=previous_id).values_list("worker", "model_version_id").first()
        if row is not None and row[0] and row[1] == model.version_id:
            return str(row[0])
    if session_id is not None:
        worker = (
            Job.objects.filter(session_id=uuid.UUID(str(session_id)), model_version_id=model.version_id)
            .exclude(worker="")
            .order_by("-queued_at")
            .values_list("worker", flat=True)
            .first()
        )
        if worker:
            return str(worker)
    return None


def version_loads(model: ServedModel, client: Any = None) -> dict[str, int]:
    """Sequences each live worker of the version carries: running and waiting in its engine
    (its last heartbeat) plus what waits in its own queue (now)."""
    client = client or get_redis()
    beats = live_beats(client)
    loads: dict[str, int] = {}
    for name, beat in beats.items():
        for version in beat.get("versions", []):
            if version.get("key") == model.key and not version.get("error"):
                loads[name] = int(version.get("running", 0)) + int(version.get("waiting", 0))
    if loads:
        pipe = client.pipeline(transaction=False)
        for name in loads:
            for key in celery_queue_keys(affinity_queue(model.queue, name)):
                pipe.llen(key)
        lengths = iter(pipe.execute())
        steps = len(celery_queue_keys(model.queue))
        for name in loads:
            loads[name] += sum(int(next(lengths) or 0) for _ in range(steps))
    return loads


def decide(preferred: str | None, loads: dict[str, int], gap: int) -> Affinity:
    if preferred is None:
        return Affinity.NEW
    if preferred not in loads:
        return Affinity.GONE
    if loads[preferred] - min(loads.values()) > gap:
        return Affinity.BUSY
    return Affinity.PINNED


GROUP_TTL_S = 300


def place(
    *,
    model: ServedModel,
    session_id: uuid.UUID | str | None,
    previous_id: uuid.UUID | str | None,
    group: str | None = None,
) -> Placement:
    """Where a new job of ``model`` is published. ``group``: the jobs of one request's
    choices (n > 1) all go where the first went, so that one worker prefills their prompt
    once. Never fails a request: without Redis or the database (both needed to create the
    job anyway) it is the shared queue."""
    if not applies(model) or (session_id is None and previous_id is None and group is None):
        return Placement(queue=model.queue, worker="", affinity=None)
    try:
        if group is not None:
            grouped = _place_group(model, session_id, previous_id, group)
            if grouped is not None:
                return grouped
        preferred = preferred_worker(model=model, session_id=session_id, previous_id=previous_id)
        loads = version_loads(model) if preferred is not None else {}
    except Exception:
        logger.warning("affinity lookup failed; using the shared queue", exc_info=True)
        return Placement(queue=model.queue, worker="", affinity=None)
    outcome = decide(preferred, loads, settings.SLUICE_AFFINITY_LOAD_GAP)
    fleet.count("sluice_affinity_routes_total", (model.name, model.label, outcome.value))
    if outcome is Affinity.PINNED and preferred is not None:
        return Placement(queue=affinity_queue(model.queue, preferred), worker=preferred, affinity=outcome)
    return Placement(queue=model.queue, worker="", affinity=outcome)


def _place_group(
    model: ServedModel, session_id: uuid.UUID | str | None, previous_id: uuid.UUID | str | None, group: str
) -> Placement | None:
    """The first job of a group picks the worker (the session's when it may, else the least
    busy) and records it; its siblings follow. None: no live worker known (shared queue)."""
    client = get_redis()
    raw: Any = client.get(group_key(group))
    chosen = raw.decode() if isinstance(raw, bytes) else raw
    if not chosen:
        loads = version_loads(model, client)
        if not loads:
            return None
        preferred = preferred_worker(model=model, session_id=session_id, previous_id=previous_id)
        if decide(preferred, loads, settings.SLUICE_AFFINITY_LOAD_GAP) is Affinity.PINNED and preferred:
            chosen = preferred
        else:
            chosen = min(sorted(loads), key=lambda name: loads[name])
        # Whoever sets it first decides for the whole group.
        if not client.set(group_key(group), chosen, nx=True, ex=GROUP_TTL_S):
            raw = client.get(group_key(group))
            chosen = (raw.decode() if isinstance(raw, bytes) else raw) or chosen
    fleet.count("sluice_affinity_routes_total", (model.name, model.label, Affinity.GROUP.value))
    return Placement(queue=affinity_queue(model.queue, chosen), worker=chosen, affinity=Affinity.GROUP)


def live_versions(client: Any = None) -> dict[str, set[str]]:
    """Each live worker's loaded versions (keys), from the heartbeats."""
    return {
        name: {str(v.get("key")) for v in beat.get("versions", []) if not v.get("error")}
        for name, beat in live_beats(client or get_redis()).items()
    }


def affinity_reconcile(pinned: Iterable[tuple[Any, str, int | None, int, str]]) -> int:
    """Move jobs waiting in the own queue of a worker that left (or unloaded their version) to
    their shared queue. ``pinned``: (job id, served name, version id, priority, worker) of
    queued jobs published to a worker's queue. Returns how many moved."""
    rows = list(pinned)
    if not rows:
        return 0
    client = get_redis()
    live = live_versions(client)
    moved = 0
    for job_id, name, version_id, priority, worker in rows:
        # A settings version is known by name only in the processes configured with it: its
        # key is built, not looked up (this reconciler may run in any worker).
        model = version_by_id(version_id, name) if version_id is not None else None
        key = model.key if model is not None else f"{name}@{SETTINGS_LABEL}"
        if (version_id is None or model is not None) and key in live.get(worker, set()):
            continue
        # Only one reconciler pass moves it, and not after a worker claimed it meanwhile.
        if not Job.objects.filter(id=job_id, status="queued", routed_worker=worker).update(
            routed_worker="", affinity=Affinity.GONE.value
        ):
            continue
        queue = model.queue if model is not None else job_queue(name, version_id)
        job_publish(job_id=job_id, queue=queue, priority=priority)
        if worker not in live:
            # Its copy in the dead worker's queue would wait there for nobody.
            client.delete(*celery_queue_keys(affinity_queue(queue, worker)))
        logger.warning("job %s: its worker %s is gone; moved to the shared queue", job_id, worker)
        moved += 1
    return moved
