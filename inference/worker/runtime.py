"""The worker process's long-lived parts: loaded model versions (each a backend and an engine,
``loading.py``), their Celery queues (``consumers.py``), heartbeat, reconciler.

One `WorkerRuntime` per worker process (Celery threads pool: every task thread of the process
shares it). A worker serves the active versions of its served names (``SLUICE_WORKER_MODELS``;
by default all of them). A sync loop follows the registry: a newly activated version is
loaded, warmed up and its queue consumed; a retired one stops being consumed and is unloaded
once its running jobs have finished (jobs finish on the version they started on). A version
that fails to load stays "loaded" with its error: its jobs fail fast (which its circuit breaker
and canary check see) instead of waiting in a queue nobody consumes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from inference.affinity import affinity_queue
from inference.core.keys import RECONCILER_KEY
from inference.core.redis import get_redis
from inference.jobs.reconcile import jobs_reconcile
from inference.models import EventKind
from inference.observability.recording import record_heartbeat
from inference.versions.health import versions_health_check
from inference.versions.lifecycle import version_event
from inference.versions.registry import ServedModel, all_versions, queue_for
from inference.worker.consumers import QueueConsumers, serves
from inference.worker.heartbeat import HEARTBEAT_INTERVAL_S, beat_remove, beat_write
from inference.worker.loading import LoadedVersion, load_version

logger = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    name: str
    served_names: frozenset[str]
    versions: dict[str, LoadedVersion] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    _inflight: Counter[str] = field(default_factory=Counter)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _load_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    #: Set when the loaded versions change: the heartbeat goes out at once, not at its next tick
    #: (the console, the admin's "loaded on" and whoever waits for a load or unload see it now).
    _beat_now: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    #: Which queues this worker's Celery consumer takes messages from.
    queues: QueueConsumers = field(init=False)

    def __post_init__(self) -> None:
        self.queues = QueueConsumers(self.name)

    # -- versions ------------------------------------------------------------------------------

    def serves(self, name: str) -> bool:
        return serves(self.served_names, name)

    def desired(self) -> list[ServedModel]:
        return [v for v in all_versions() if v.active and self.serves(v.name)]

    def ensure(self, model: ServedModel) -> LoadedVersion:
        """The loaded version for a job (loading it now if the sync loop has not yet). Loading
        holds only that version's lock: jobs of other versions go on meanwhile."""
        loaded = self.versions.get(model.key)
        if loaded is not None:
            return loaded
        with self._lock:
            version_lock = self._load_locks.setdefault(model.key, threading.Lock())
        with version_lock:
            loaded = self.versions.get(model.key)
            if loaded is None:
                loaded = load_version(model, worker=self.name)
                with self._lock:
                    self.versions[model.key] = loaded
                    self._beat_now.set()
                self._event_loaded(loaded)
            return loaded

    def _event_loaded(self, loaded: LoadedVersion) -> None:
        try:
            if loaded.error:
                version_event(loaded.model.version_id, EventKind.LOAD_FAILED, loaded.error, actor=self.name)
            else:
                description = loaded.backend.description if loaded.backend else ""
                version_event(
                    loaded.model.version_id,
                    EventKind.LOADED,
                    f"loaded on {self.name} ({description})",
                    actor=self.name,
                )
        except Exception:
            logger.debug("could not record the load event", exc_info=True)

    def job_started(self, key: str) -> None:
        with self._lock:
            self._inflight[key] += 1

    def job_done(self, key: str) -> None:
        with self._lock:
            self._inflight[key] -= 1

    def sync(self) -> None:
        """Follow the registry: load what became active, unload what retired and is idle."""
        known = all_versions()
        desired = {v.key: v for v in known if v.active and self.serves(v.name)}
        # A deleted version takes no new jobs (creating one for it fails: VersionGone), so it
        # needs no grace; a retired one may still be routed to by a web's cached registry.
        still_listed = {v.key for v in known}
        for name in sorted(self.served_names - {"*"}):
            self.queues.consume(queue_for(name))  # its settings version's queue (jobs from before versions)
        for key, model in desired.items():
            if key not in self.versions:
                self.ensure(model)
            else:
                # Weight or status changed: keep the engine, refresh what we report.
                self.versions[key].model = model
                self.versions[key].undesired_since = None
            self.queues.consume(model.queue)
        now = time.monotonic()
        # Web processes may route to a retired version until their registry cache expires.
        grace = settings.SLUICE_REGISTRY_CACHE_S + 3.0
        for key, loaded in list(self.versions.items()):
            if key in desired:
                continue
            if loaded.undesired_since is None:
                loaded.undesired_since = now
            waited = now - loaded.undesired_since
            if (key in still_listed and waited < grace) or self._busy(loaded):
                continue  # jobs finish on the version they started on: keep consuming its queue
            self.queues.cancel(loaded.model.queue)
            if self._busy(loaded):  # a message slipped in meanwhile: take it after all
                self.queues.consume(loaded.model.queue)
                continue
            with self._lock:
                if self._inflight[key] > 0:
                    continue
                del self.versions[key]
            loaded.stop()
            self._beat_now.set()
            logger.info("unloaded %s", key)
            try:
                version_event(
                    loaded.model.version_id, EventKind.UNLOADED, f"unloaded from {self.name}", actor=self.name
                )
            except Exception:
                logger.debug("could not record the unload event", exc_info=True)

    def _busy(self, loaded: LoadedVersion) -> bool:
        load = loaded.load()
        key = loaded.model.key
        return bool(
            self._inflight[key] > 0
            or load["running"]
            or load["waiting"]
            or self.queues.queued(loaded.model.queue)
            or self.queues.queued(affinity_queue(loaded.model.queue, self.name))
        )

    def on_consumer_ready(self, consumer: Any) -> None:
        """Celery's consumer is up (worker_ready): take the queues of the loaded versions."""
        with self._lock:
            queues = [loaded.model.queue for loaded in self.versions.values()]
        self.queues.on_consumer_ready(consumer, served_names=self.served_names, version_queues=queues)

    # -- background ----------------------------------------------------------------------------

    def start_background(self) -> None:
        for target, label in (
            (self._heartbeat_loop, "heartbeat"),
            (self._reconcile_loop, "reconciler"),
            (self._sync_loop, "sync"),
        ):
            thread = threading.Thread(target=target, name=f"sluice-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def heartbeat_payload(self) -> dict[str, Any]:
        with self._lock:
            loaded = list(self.versions.values())
        versions: list[dict[str, Any]] = []
        running = waiting = steps = 0
        for version in loaded:
            load = version.load()
            kv_used, kv_capacity = version.kv_usage()
            running, waiting, steps = (
                running + load["running"],
                waiting + load["waiting"],
                steps + load["steps"],
            )
            versions.append(
                {
                    "key": version.model.key,
                    "id": version.model.version_id,
                    "name": version.model.name,
                    "label": version.model.label,
                    "status": version.model.status,
                    "backend": version.backend.description if version.backend else "",
                    # native (the C++ kernel) or gemm (torch's batched GEMMs; the fallback says why)
                    "attention": version.backend.attention if version.backend else "",
                    "attention_fallback": version.backend.attention_fallback if version.backend else "",
                    "error": version.error,
                    "running": load["running"],
                    "waiting": load["waiting"],
                    "max_batch_size": version.model.batch_size,
                    "kv_used": kv_used,
                    "kv_capacity": kv_capacity,
                    "prefix_cache": version.prefix_cache(),
                    "queued": self.queues.queued(version.model.queue),
                }
            )
        return {
            "name": self.name,
            "pid": os.getpid(),
            "models": sorted({str(v["name"]) for v in versions if not v["error"]}),
            "versions": versions,
            "backend": ", ".join(sorted({str(v["backend"]) for v in versions if v["backend"]})),
            "max_batch_size": max((int(v["max_batch_size"]) for v in versions), default=0),
            "running": running,
            "waiting": waiting,
            "steps": steps,
            "started_at": self.started_at,
            "ts": time.time(),
        }

    def _heartbeat_loop(self) -> None:
        client = get_redis()
        interval = min(HEARTBEAT_INTERVAL_S, settings.SLUICE_METRICS_FLUSH_S)
        while not self._stop.is_set():
            try:
                payload = self.heartbeat_payload()
                beat_write(client, self.name, payload, ttl_s=settings.SLUICE_HEARTBEAT_TTL_S)
                record_heartbeat(payload)
                with self._lock:
                    metrics = [v.metrics for v in self.versions.values() if v.metrics is not None]
                for series in metrics:
                    series.flush(client)
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)
            self._beat_now.wait(interval)
            self._beat_now.clear()

    def _sync_loop(self) -> None:
        while not self._stop.wait(settings.SLUICE_WORKER_SYNC_S):
            try:
                self.sync()
            except Exception:
                logger.warning("version sync failed", exc_info=True)
            finally:
                close_old_connections()

    def _reconcile_loop(self) -> None:
        client = get_redis()
        interval = settings.SLUICE_RECONCILE_INTERVAL_S
        while not self._stop.wait(interval):
            try:
                # One reconciler at a time across the fleet.
                if client.set(RECONCILER_KEY, self.name, nx=True, px=int(interval * 1000 * 2)):
                    jobs_reconcile()
                    versions_health_check()
            except Exception:
                logger.warning("reconciler pass failed", exc_info=True)
            finally:
                close_old_connections()

    def stop(self) -> None:
        self._stop.set()
        self._beat_now.set()
        with self._lock:
            loaded, self.versions = list(self.versions.values()), {}
        for version in loaded:
            version.stop()
        try:
            client = get_redis()
            beat_remove(client, self.name)
        except Exception:
            logger.debug("could not remove worker heartbeat", exc_info=True)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def served_names() -> frozenset[str]:
    """``*`` (the default): every served name; a fleet split by model lists its names."""
    return frozenset(settings.SLUICE_WORKER_MODELS or ["*"])


def start_runtime(name: str | None = None) -> WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            return _runtime
        started = time.monotonic()
        runtime = WorkerRuntime(
            name=name or f"{socket.gethostname()}:{os.getpid()}", served_names=served_names()
        )
        for model in runtime.desired():
            runtime.ensure(model)
        runtime.start_background()
        logger.info(
            "worker runtime ready: %s in %.1fs",
            ", ".join(runtime.versions) or "(nothing active)",
            time.monotonic() - started,
        )
        _runtime = runtime
        return runtime


def get_runtime() -> WorkerRuntime:
    return _runtime or start_runtime()


def stop_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
