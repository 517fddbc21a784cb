"""Prometheus metrics (names from DESIGN.md §5), for the whole fleet on every web `/metrics`.

- Request-level latencies are observed where the client's experience is: in the web process
  that streams the answer (time to first token, inter-token latency, end to end).
- Engine-level series (batch size, tokens, queue time, finished requests) happen in worker
  processes, possibly on other machines. Each worker accumulates them in memory and adds
  them to Redis hashes every few seconds (`EngineMetrics.flush`); the web process exposes the
  sums at scrape time (`FleetCollector`), together with live gauges (jobs waiting in the
  model's Celery queue and inside engines, sequences running) read from Redis.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    import redis

    from inference.engine import SequenceResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)

TIME_TO_FIRST_TOKEN = Histogram(
    "sluice_time_to_first_token_seconds",
    "Request received to first token sent",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "sluice_inter_token_latency_seconds",
    "Time between two streamed token chunks",
    ["model"],
    buckets=ITL_BUCKETS,
)
E2E_LATENCY = Histogram(
    "sluice_e2e_request_latency_seconds", "Request received to last byte", ["model"], buckets=LATENCY_BUCKETS
)

RATELIMIT_DECISIONS = Counter(
    "sluice_ratelimit_decisions_total",
    "Admission decisions (admitted, rate_limited, overloaded, too_large, budget_exhausted)",
    ["result", "policy"],
)

METRICS_KEY = "sluice:metrics"  # hash per series: sluice:metrics:<name>:<model>
METRICS_TTL_S = 30 * 24 * 3600

# Worker-side series: (name, kind, help, buckets)
_SERIES: dict[str, tuple[str, str, Sequence[float]]] = {
    "sluice_batch_size": ("histogram", "Sequences decoded together per engine step", BATCH_BUCKETS),
    "sluice_queue_time_seconds": ("histogram", "Job handed to the engine to its prefill", LATENCY_BUCKETS),
    "sluice_generation_tokens_total": ("counter", "Tokens generated", ()),
    "sluice_prompt_tokens_total": ("counter", "Prompt tokens prefilled", ()),
    "sluice_requests_total": ("counter", "Sequences finished by the engines, by outcome", ()),
}


def celery_queue_keys(queue: str) -> list[str]:
    """The Redis lists of a Celery queue: one per priority step (kombu's Redis transport)."""
    from django.conf import settings

    options: dict[str, Any] = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    prefix, sep = options.get("global_keyprefix", ""), options.get("sep", "\x06\x16")
    steps: list[int] = options.get("priority_steps", [0, 3, 6, 9])
    return [f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}" for step in steps]


def series_key(name: str, model: str) -> str:
    return f"{METRICS_KEY}:{name}:{model}"


class EngineMetrics:
    """The engine's observer: accumulates in memory, `flush` adds the deltas to Redis."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def _observe(self, name: str, value: float) -> None:
        buckets = _SERIES[name][2]
        index = bisect.bisect_left(buckets, value)
        field = f"b:{buckets[index]}" if index < len(buckets) else "b:+Inf"
        pending = self._pending[name]
        pending[field] += 1
        pending["sum"] += value
        pending["count"] += 1

    def _add(self, name: str, value: float, label: str = "") -> None:
        self._pending[name][f"v:{label}"] += value

    def on_step(self, *, batch_size: int, new_tokens: int, seconds: float, prefill: bool) -> None:
        with self._lock:
            if not prefill:
                self._observe("sluice_batch_size", batch_size)
            self._add("sluice_generation_tokens_total", new_tokens)

    def on_finish(self, result: SequenceResult) -> None:
        with self._lock:
            self._add("sluice_prompt_tokens_total", result.prompt_tokens)
            if result.admitted_at is not None:
                self._observe("sluice_queue_time_seconds", max(0.0, result.admitted_at - result.submitted_at))
            self._add("sluice_requests_total", 1, result.finish_reason.value)

    def flush(self, client: redis.Redis) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
        if not pending:
            return
        pipe = client.pipeline(transaction=False)
        for name, fields in pending.items():
            key = series_key(name, self.model)
            for field, value in fields.items():
                pipe.hincrbyfloat(key, field, value)
            pipe.expire(key, METRICS_TTL_S)
        try:
            pipe.execute()
        except Exception:
            # Redis unreachable: keep the deltas for the next flush rather than lose them.
            with self._lock:
                for name, fields in pending.items():
                    for field, value in fields.items():
                        self._pending[name][field] += value
            raise


class FleetCollector:
    """Exposes the worker series (summed over the fleet) and live queue gauges."""

    def __init__(self, client_factory: Any) -> None:
        self._client = client_factory

    def describe(self) -> list[Metric]:
        return []  # collected lazily (Redis may be down when the registry is built)

    def collect(self) -> Iterator[Metric]:
        try:
            client = self._client()
            yield from self._series(client)
            yield from self._gauges(client)
        except Exception:  # a scrape must not fail because Redis does
            return

    def _series(self, client: redis.Redis) -> Iterator[Metric]:
        found: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        for raw_key in client.scan_iter(match=f"{METRICS_KEY}:*", count=500):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            _, _, name, model = key.split(":", 3)
            if name in _SERIES:
                raw: Any = client.hgetall(key)
                found[name][model] = {
                    (k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in raw.items()
                }

        def labels(series_model: str) -> list[str]:
            # Engines observe per version ("name@label"): labels model and version.
            model, _, version = series_model.partition("@")
            return [model, version or "default"]

        for name, (kind, doc, buckets) in _SERIES.items():
            if kind == "histogram":
                histogram = HistogramMetricFamily(name, doc, labels=["model", "version"])
                for model, fields in found.get(name, {}).items():
                    cumulative: list[tuple[str, float]] = []
                    running = 0.0
                    for bound in buckets:
                        running += fields.get(f"b:{bound}", 0.0)
                        cumulative.append((str(float(bound)), running))
                    cumulative.append(("+Inf", running + fields.get("b:+Inf", 0.0)))
                    histogram.add_metric(labels(model), cumulative, fields.get("sum", 0.0))
                yield histogram
            else:
                labelled = name == "sluice_requests_total"
                counter = CounterMetricFamily(
                    name.removesuffix("_total"),
                    doc,
                    labels=["model", "version", "status"] if labelled else ["model", "version"],
                )
                for model, fields in found.get(name, {}).items():
                    for field, value in fields.items():
                        label = field.removeprefix("v:")
                        counter.add_metric([*labels(model), label] if labelled else labels(model), value)
                yield counter

    def _gauges(self, client: redis.Redis) -> Iterator[Metric]:
        from inference.admission.ratelimit import RateLimiter
        from inference.registry import all_versions

        waiting = GaugeMetricFamily(
            "sluice_jobs_in_queue", "Jobs waiting: in the model's queues and in engines", labels=["model"]
        )
        running = GaugeMetricFamily(
            "sluice_engine_running_sequences", "Sequences in engine batches", labels=["model"]
        )
        admission = GaugeMetricFamily(
            "sluice_admission_waiting",
            "Requests waiting in a model's admission waiting room",
            labels=["model"],
        )
        engines: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for raw_key in client.scan_iter(match="sluice:worker:*", count=500):
            raw = client.get(raw_key)
            if not raw:
                continue
            beat = json.loads(raw)
            for version in beat.get("versions", []):
                engines[version["name"]][0] += int(version.get("running", 0))
                engines[version["name"]][1] += int(version.get("waiting", 0))
        queues: dict[str, set[str]] = defaultdict(set)
        for version in all_versions():
            if version.status != "draft":
                queues[version.name].add(version.queue)
        limiter = RateLimiter(client)
        for model in set(queues) | set(engines):
            pipe = client.pipeline(transaction=False)
            for queue in queues.get(model, set()):
                for key in celery_queue_keys(queue):
                    pipe.llen(key)
            queued = sum(int(n or 0) for n in pipe.execute())
            waiting.add_metric([model], queued + engines[model][1])
            running.add_metric([model], engines[model][0])
            admission.add_metric([model], limiter.model_load(model)[1])
        yield waiting
        yield running
        yield admission


class DatabasePoolCollector:
    """This process's database connection pool: a connection checked out and never returned
    (a leak) shows as ``in_use`` that does not go back to zero when the process is idle."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from django.db import connections

        gauge = GaugeMetricFamily(
            "sluice_db_pool_connections", "Database connections of this process's pool", labels=["state"]
        )
        waiting = GaugeMetricFamily(
            "sluice_db_pool_requests_waiting", "Requests of this process waiting for a pooled connection"
        )
        try:
            pool = getattr(connections["default"], "pool", None)
            stats = pool.get_stats() if pool is not None else None
        except Exception:
            return
        if stats is None:
            return
        size, available = int(stats.get("pool_size", 0)), int(stats.get("pool_available", 0))
        gauge.add_metric(["size"], size)
        gauge.add_metric(["available"], available)
        gauge.add_metric(["in_use"], max(0, size - available))
        gauge.add_metric(["max"], int(stats.get("pool_max", 0)))
        waiting.add_metric([], int(stats.get("requests_waiting", 0)))
        yield gauge
        yield waiting


class DeadLetterCollector:
    """Jobs dead-lettered so far, by reason (from the table: every process sees the fleet's)."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from django.db import connection
        from django.db.models import Count

        from inference.models import DeadLetter

        counter = CounterMetricFamily(
            "sluice_dead_letters", "Jobs that used up their retries, by reason", labels=["reason", "model"]
        )
        try:
            rows = list(DeadLetter.objects.values_list("reason", "model").annotate(n=Count("id")))
        except Exception:  # a scrape must not fail because the database does
            return
        finally:
            connection.close()
        for reason, model, count in rows:
            counter.add_metric([reason, model], count)
        yield counter


_registered = False
_register_lock = threading.Lock()


def register_fleet_collector() -> None:
    """Add the fleet collector to the default registry once per process (web processes)."""
    global _registered
    from prometheus_client import REGISTRY

    from inference.store import get_redis

    with _register_lock:
        if not _registered:
            REGISTRY.register(FleetCollector(get_redis))
            REGISTRY.register(DatabasePoolCollector())
            REGISTRY.register(DeadLetterCollector())
            _registered = True
