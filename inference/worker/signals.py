"""Celery worker lifecycle: load the model versions before consuming, take their queues when
the consumer is up, stop the engines after the pool.

Imported by ``config/celery.py``, so the handlers are connected before Celery sends its
signals. Nothing here imports models at import time (Django may not be set up yet).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import django
from celery.signals import worker_init, worker_ready, worker_shutdown
from django.conf import settings

logger = logging.getLogger(__name__)


@worker_init.connect
def _load_model(sender: Any = None, **kwargs: Any) -> None:
    if not settings.SLUICE_WORKER_PRELOAD:
        return
    django.setup()
    if settings.SLUICE_WORKER_ROLE == "embeddings":
        # Knowledge-base ingestion and query embeddings: the sentence model, no LLM engine.
        from inference.rag.services import local_embedder  # models: loads before django.setup()

        local_embedder().embed(["warm-up"])
        hostname = getattr(sender, "hostname", None) or "embeddings"
        _serve_metrics(lambda: {"name": hostname, "versions": []})
        return
    # The engine thread holds the GIL through the Python parts of every forward pass; task
    # threads (database, Redis) would wait up to the default 5 ms for each hand-over.
    sys.setswitchinterval(settings.SLUICE_WORKER_SWITCH_INTERVAL_S)
    # models: this module loads before django.setup() (see the module docstring)
    from inference.worker.runtime import start_runtime

    hostname = getattr(sender, "hostname", None)
    runtime = start_runtime(name=hostname)
    _serve_metrics(runtime.heartbeat_payload)


def _serve_metrics(payload: Callable[[], dict[str, Any]]) -> None:
    """The worker's own /metrics, where SLUICE_WORKER_METRICS_PORT asks for it."""
    if not settings.SLUICE_WORKER_METRICS_PORT:
        return
    # models (through the fleet collector): this module loads before django.setup()
    from inference.worker.metrics_server import serve_worker_metrics

    try:
        serve_worker_metrics(
            port=settings.SLUICE_WORKER_METRICS_PORT,
            addr=settings.SLUICE_WORKER_METRICS_ADDR,
            payload=payload,
        )
    except OSError:  # the port is taken: the worker still serves, Prometheus sees it down
        logger.warning(
            "could not serve worker metrics on port %s", settings.SLUICE_WORKER_METRICS_PORT, exc_info=True
        )


@worker_ready.connect
def _consume_versions(sender: Any = None, **kwargs: Any) -> None:
    if settings.SLUICE_WORKER_ROLE == "embeddings" or not settings.SLUICE_WORKER_PRELOAD:
        return
    from inference.worker.runtime import get_runtime  # models: loads before django.setup()

    get_runtime().on_consumer_ready(sender)


@worker_shutdown.connect
def _stop_engine(**kwargs: Any) -> None:
    if settings.SLUICE_WORKER_ROLE == "embeddings":
        return
    from inference.worker.runtime import stop_runtime  # models: loads before django.setup()

    stop_runtime()
