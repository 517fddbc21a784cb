"""A loaded model version: its backend (built by the registry of backend kinds) and the engine
thread that batches its sequences, loaded and warmed up on a thread of its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# The worker's own app (`celery -A config` made it current): importing config.celery here would
# close an import cycle (config.celery connects this package's signals).
from django.conf import settings

from inference.backends.base import ModelBackend
from inference.core.redis import get_redis
from inference.engine import Engine
from inference.observability.recording import EngineMetrics
from inference.store import get_streams
from inference.streams import RedisTokenSink
from inference.versions.registry import ServedModel
from inference.worker import backends

logger = logging.getLogger(__name__)


@dataclass
class LoadedVersion:
    model: ServedModel
    engine: Engine | None
    backend: ModelBackend | None
    metrics: EngineMetrics | None
    error: str = ""
    loaded_at: float = field(default_factory=time.time)
    undesired_since: float | None = None  # retired (or deleted) since: unloaded once idle

    def load(self) -> dict[str, int]:
        return self.engine.load if self.engine is not None else {"running": 0, "waiting": 0, "steps": 0}

    def kv_usage(self) -> tuple[int, int]:
        if self.backend is None:
            return 0, 0
        try:
            return self.backend.kv_usage()
        except Exception:  # the engine thread changed the cache under us: skip one reading
            return 0, 0

    def prefix_cache(self) -> dict[str, int]:
        if self.backend is None:
            return {}
        try:
            return self.backend.prefix_cache_stats() or {}
        except Exception:  # read while the engine thread changes it: skip one reading
            return {}

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.metrics is not None:
            try:
                self.metrics.flush(get_redis())
            except Exception:
                logger.debug("final metrics flush failed", exc_info=True)
        if self.backend is not None:
            self.backend.close()


T = TypeVar("T")


def on_own_thread(fn: Callable[[], T], *, name: str) -> T:
    """Run ``fn`` on a thread of its own and wait for it (its exception is raised here).

    Why: torch's OpenMP (libgomp) keeps a pool of threads for every thread that ran a parallel
    op, for as long as that thread lives, and once the pools hold more threads than there are
    cores it stops spinning between ops (100 spins instead of about 3 ms). A model loaded and
    warmed up on the worker's main thread (or its sync thread) left such a pool behind, so the
    engine thread's forward ran as if ``OMP_WAIT_POLICY=PASSIVE``: about 2x slower at every
    batch size (bench/README, "Two OpenMP pools"). A thread that ends frees its pool, leaving
    the engine thread's the only one."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _load_and_warm_up(model: ServedModel, worker: str) -> ModelBackend:
    backend = backends.build_backend(model, worker=worker)
    try:
        backend.warmup()
    except BaseException:
        backend.close()
        raise
    return backend


def load_version(model: ServedModel, *, worker: str = "") -> LoadedVersion:
    """Load, warm up and start a version; a failure is kept (its jobs fail fast with it)."""
    started = time.monotonic()
    try:
        backend = on_own_thread(lambda: _load_and_warm_up(model, worker), name=f"load-{model.key}")
    except Exception as exc:
        logger.exception("could not load %s", model.key)
        return LoadedVersion(
            model=model, engine=None, backend=None, metrics=None, error=f"{type(exc).__name__}: {exc}"
        )
    metrics = EngineMetrics(model=model.key)
    engine = Engine(
        backend,
        RedisTokenSink(get_streams()),
        max_batch_size=model.batch_size,
        max_batch_tokens=model.batch_tokens,
        max_prefill_tokens=settings.SLUICE_MAX_PREFILL_TOKENS,
        guard_kinds=settings.SLUICE_GUARD_KINDS,
        observer=metrics,
        name=f"engine-{model.key}",
    ).start()
    logger.info("loaded %s on %s in %.1fs", model.key, backend.description, time.monotonic() - started)
    return LoadedVersion(model=model, engine=engine, backend=backend, metrics=metrics)
