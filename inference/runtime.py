"""The worker process's long-lived parts: model backend, engine, heartbeat, reconciler.

One `WorkerRuntime` per worker process (Celery threads pool: every task thread of the
process shares it). Created when the worker starts (`inference/worker.py`), or lazily by the
first job if something runs jobs without the worker signals (a shell, a test).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from inference.backends.base import ModelBackend
from inference.engine import Engine
from inference.metrics import EngineMetrics
from inference.registry import ServedModel, default_model
from inference.store import get_redis, get_streams
from inference.streams import RedisTokenSink

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15


def worker_key(name: str) -> str:
    return f"sluice:worker:{name}"


def load_backend(model: ServedModel) -> ModelBackend:
    """Build the backend for a served model (the only place that reaches for torch)."""
    from inference.backends.torch_local import TorchCausalLMBackend

    info = model.info
    return TorchCausalLMBackend(
        model.path,
        device=settings.SLUICE_DEVICE,
        dtype=settings.SLUICE_DTYPE,
        threads=settings.SLUICE_TORCH_THREADS,
        max_batch_size=settings.SLUICE_MAX_BATCH_SIZE,
        eos_token_ids=sorted(info.eos_token_ids),
        vocab_decode=info.decode,
    )


@dataclass
class WorkerRuntime:
    model: ServedModel
    backend: ModelBackend
    engine: Engine
    name: str
    metrics: EngineMetrics | None = None
    started_at: float = field(default_factory=time.time)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start_background(self) -> None:
        for target, label in ((self._heartbeat_loop, "heartbeat"), (self._reconcile_loop, "reconciler")):
            thread = threading.Thread(target=target, name=f"sluice-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def heartbeat_payload(self) -> dict[str, Any]:
        load = self.engine.load
        return {
            "name": self.name,
            "pid": os.getpid(),
            "models": [self.model.name],
            "backend": self.backend.description,
            "max_batch_size": self.engine.scheduler.max_batch_size,
            "running": load["running"],
            "waiting": load["waiting"],
            "steps": load["steps"],
            "started_at": self.started_at,
            "ts": time.time(),
        }

    def _heartbeat_loop(self) -> None:
        client = get_redis()
        interval = min(HEARTBEAT_INTERVAL_S, settings.SLUICE_METRICS_FLUSH_S)
        while not self._stop.is_set():
            try:
                client.set(worker_key(self.name), json.dumps(self.heartbeat_payload()), ex=HEARTBEAT_TTL_S)
                if self.metrics is not None:
                    self.metrics.flush(client)
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)
            self._stop.wait(interval)

    def _reconcile_loop(self) -> None:
        from inference.services import jobs_reconcile

        client = get_redis()
        interval = settings.SLUICE_RECONCILE_INTERVAL_S
        while not self._stop.wait(interval):
            try:
                # One reconciler at a time across the fleet.
                if client.set("sluice:reconciler", self.name, nx=True, px=int(interval * 1000 * 2)):
                    jobs_reconcile()
            except Exception:
                logger.warning("reconciler pass failed", exc_info=True)
            finally:
                from django.db import close_old_connections

                close_old_connections()

    def stop(self) -> None:
        self._stop.set()
        self.engine.stop()
        if self.metrics is not None:
            try:
                self.metrics.flush(get_redis())
            except Exception:
                logger.debug("final metrics flush failed", exc_info=True)
        try:
            get_redis().delete(worker_key(self.name))
        except Exception:
            logger.debug("could not remove worker heartbeat", exc_info=True)
        self.backend.close()


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def start_runtime(name: str | None = None) -> WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            return _runtime
        model = default_model()
        started = time.monotonic()
        backend = load_backend(model)
        backend.warmup()
        metrics = EngineMetrics(model=model.name)
        engine = Engine(
            backend,
            RedisTokenSink(get_streams()),
            max_batch_size=settings.SLUICE_MAX_BATCH_SIZE,
            max_batch_tokens=settings.SLUICE_MAX_BATCH_TOKENS,
            max_prefill_tokens=settings.SLUICE_MAX_PREFILL_TOKENS,
            observer=metrics,
            name=f"engine-{model.name}",
        ).start()
        runtime = WorkerRuntime(
            model=model,
            backend=backend,
            engine=engine,
            name=name or f"{socket.gethostname()}:{os.getpid()}",
            metrics=metrics,
        )
        runtime.start_background()
        logger.info(
            "worker runtime ready: %s on %s in %.1fs",
            model.name,
            backend.description,
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
