"""A worker's own /metrics (off unless ``SLUICE_WORKER_METRICS_PORT`` is set): what Prometheus
scrapes per worker besides the web's fleet view. Its process (CPU, memory, open files, GC)
and, from the same reading as its heartbeat, the sequences and KV-cache positions of each
version it has loaded. A worker whose endpoint stops answering is ``up == 0`` in Prometheus,
even before its heartbeat expires.

The fleet series (requests, latencies, tokens) stay on the web's /metrics, summed over every
worker through Redis: scraping them here too would count them twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from inference.observability.export import PrefixCacheFamilies

logger = logging.getLogger(__name__)


class WorkerCollector:
    def __init__(self, payload: Callable[[], dict[str, Any]]) -> None:
        self._payload = payload

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            payload = self._payload()
        except Exception:  # a scrape must not fail because a version is being swapped
            logger.debug("worker metrics: no heartbeat payload", exc_info=True)
            return
        worker = str(payload.get("name", ""))
        loaded = GaugeMetricFamily(
            "sluice_worker_version_loaded",
            "1 for each version this worker serves, 0 for one it failed to load",
            labels=["worker", "model", "version"],
        )
        sequences = GaugeMetricFamily(
            "sluice_worker_sequences",
            "Sequences in this worker's engines, running (in the batch) or waiting (prefetched)",
            labels=["worker", "model", "version", "state"],
        )
        kv = GaugeMetricFamily(
            "sluice_worker_kv_cache_positions",
            "Key/value cache positions of this worker's engines, used and allocated",
            labels=["worker", "model", "version", "kind"],
        )
        prefix = PrefixCacheFamilies(labels=["worker", "model", "version"])
        for version in payload.get("versions", []):
            labels = [worker, str(version.get("name", "")), str(version.get("label", ""))]
            loaded.add_metric(labels, 0.0 if version.get("error") else 1.0)
            sequences.add_metric([*labels, "running"], float(version.get("running", 0)))
            sequences.add_metric([*labels, "waiting"], float(version.get("waiting", 0)))
            kv.add_metric([*labels, "used"], float(version.get("kv_used", 0)))
            kv.add_metric([*labels, "capacity"], float(version.get("kv_capacity", 0)))
            prefix.add(labels, version.get("prefix_cache") or {})
        yield loaded
        yield sequences
        yield kv
        yield from prefix.families()


def serve_worker_metrics(*, port: int, addr: str, payload: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """Start the endpoint in a daemon thread (prometheus_client's own server)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(WorkerCollector(payload))
    start_http_server(port, addr=addr, registry=registry)
    logger.info("worker metrics on http://%s:%d/metrics", addr, port)
    return registry
