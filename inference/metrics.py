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
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from inference.worker.heartbeat import seen_at, workers_seen

if TYPE_CHECKING:
    import redis

    from inference.engine import SequenceResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)

# Fleet series: recorded by any process (web or worker), added to Redis every second, summed
# over the fleet by every web process's /metrics. (name: kind, help, labels, buckets)
FLEET_SERIES: dict[str, tuple[str, str, tuple[str, ...], Sequence[float]]] = {
    "sluice_requests_total": (
        "counter",
        "Requests by outcome: status succeeded|failed|cancelled|rejected; reason: the finish reason, "
        "the failure (error, deadline, worker_lost, upstream_error, load_failed, ...) or the refusal "
        "(rate_limited, overloaded, ...)",
        ("model", "version", "status", "reason"),
        (),
    ),
    "sluice_time_to_first_token_seconds": (
        "histogram", "Request received to first token sent", ("model", "version"), LATENCY_BUCKETS
    ),
    "sluice_inter_token_latency_seconds": (
        "histogram", "Time between two streamed token chunks", ("model", "version"), ITL_BUCKETS
    ),
    "sluice_e2e_request_latency_seconds": (
        "histogram", "Request received to last byte", ("model", "version"), LATENCY_BUCKETS
    ),
    "sluice_admission_wait_seconds": (
        "histogram", "Time a request waited to be admitted (rate limit, busy model)", ("model", "policy"),
        LATENCY_BUCKETS,
    ),
    "sluice_ratelimit_decisions_total": (
        "counter",
        "Admission decisions (admitted, rate_limited, overloaded, too_large, budget_exhausted) by policy",
        ("result", "policy"),
        (),
    ),
    "sluice_cache_requests_total": (
        "counter", "Result-cache lookups of deterministic jobs, hit or miss", ("model", "version", "result"),
        (),
    ),
    "sluice_retrieval_seconds": (
        "histogram", "Knowledge-base retrieval for a job (query embedding and search)", ("model",),
        LATENCY_BUCKETS,
    ),
    "sluice_upstream_time_to_first_token_seconds": (
        "histogram", "Request sent to an upstream replica to its first token (openai versions)",
        ("model", "version", "replica"), LATENCY_BUCKETS,
    ),
    "sluice_upstream_inter_token_latency_seconds": (
        "histogram", "Time between two tokens from an upstream replica", ("model", "version", "replica"),
        ITL_BUCKETS,
    ),
    "sluice_upstream_requests_total": (
        "counter",
        "Requests sent to an upstream replica, by result: ok (the upstream ended it), closed (Sluice "
        "closed it after tokens: max tokens, a stop string, a cancel), cancelled (before any token), error",
        ("model", "version", "replica", "result"), (),
    ),
    "sluice_affinity_routes_total": (
        "counter",
        "Jobs continuing a session (local versions with a prefix cache), by placement: pinned (to the "
        "worker that ran the turn before), busy or gone (that worker too loaded or gone: the shared "
        "queue), new (nothing ran before), group (a choice of an n > 1 request, with its siblings)",
        ("model", "version", "outcome"), (),
    ),
}  # fmt: skip
FLEET_KEY = "sluice:fleet"
_FIELD_SEP = "\x1f"


class FleetRecorder:
    """Fleet series of this process: counted in memory, added to Redis every second by a
    background thread (a lost flush is kept for the next one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending = defaultdict(lambda: defaultdict(float))
        self._thread = None

    def count(self, name: str, labels: Sequence[Any], value: float = 1.0) -> None:
        with self._lock:
            self._pending[name][json.dumps([str(v) for v in labels]) + _FIELD_SEP + "v"] += value
        self._start()

    def observe(self, name: str, labels: Sequence[Any], seconds: float) -> None:
        buckets = FLEET_SERIES[name][3]
        index = bisect.bisect_left(buckets, seconds)
        bound = str(buckets[index]) if index < len(buckets) else "+Inf"
        base = json.dumps([str(v) for v in labels]) + _FIELD_SEP
        with self._lock:
            pending = self._pending[name]
            pending[base + "b:" + bound] += 1
            pending[base + "sum"] += seconds
            pending[base + "count"] += 1
        self._start()

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="sluice-fleet-metrics", daemon=True
                    )
                    self._thread.start()

    def _loop(self) -> None:
        import contextlib

        while True:
            time.sleep(1.0)
            with contextlib.suppress(Exception):  # Redis unreachable: the next flush tries again
                self.flush()

    def flush(self) -> None:
        from inference.store import get_redis

        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
        if not pending:
            return
        pipe = get_redis().pipeline(transaction=False)
        for name, fields in pending.items():
            for key, value in fields.items():
                pipe.hincrbyfloat(f"{FLEET_KEY}:{name}", key, value)
            pipe.expire(f"{FLEET_KEY}:{name}", METRICS_TTL_S)
        try:
            pipe.execute()
        except Exception:
            with self._lock:
                for name, fields in pending.items():
                    for key, value in fields.items():
                        self._pending[name][key] += value
            raise


fleet = FleetRecorder()


def _series() -> Any:
    from inference.store import get_redis
    from inference.timeseries import series

    series.connect(get_redis)
    return series


def series_buffer() -> Any:
    """The console's time series buffer of this process (connected to Redis)."""
    return _series()


def record_request_end(*, model: str, version: str, status: str, reason: str) -> None:
    """A request ended (a job finished, failed or was cancelled, or it was refused)."""
    fleet.count("sluice_requests_total", (model, version, status, reason or "none"))
    _series().add("req", (model, version, status, reason or "none"))


def record_latency(kind: str, *, model: str, version: str, seconds: float) -> None:
    """``kind``: ttft, itl or e2e, as the client saw it."""
    name = {
        "ttft": "sluice_time_to_first_token_seconds",
        "itl": "sluice_inter_token_latency_seconds",
        "e2e": "sluice_e2e_request_latency_seconds",
    }[kind]
    fleet.observe(name, (model, version), seconds)
    _series().observe(kind, (model, version), seconds)


def record_admission(*, result: str, policy: str, model: str, waited_s: float | None = None) -> None:
    fleet.count("sluice_ratelimit_decisions_total", (result, policy))
    series = _series()
    series.add("rl", (policy, result))
    if waited_s is not None:
        fleet.observe("sluice_admission_wait_seconds", (model, policy), waited_s)
        series.observe("wait", (model, policy), waited_s)


def record_cache(*, model: str, version: str, hit: bool) -> None:
    result = "hit" if hit else "miss"
    fleet.count("sluice_cache_requests_total", (model, version, result))
    _series().add("cache", (model, version, result))


def record_retrieval(*, model: str, seconds: float) -> None:
    fleet.observe("sluice_retrieval_seconds", (model,), seconds)
    _series().observe("rag", (model,), seconds)


def record_heartbeat(beat: dict[str, Any]) -> None:
    """A worker's load, as gauges of the console's series (per worker and version)."""
    series = _series()
    worker = beat["name"]
    for version in beat.get("versions", []):
        labels = (worker, version["name"], version["label"])
        series.gauge("running", labels, version.get("running", 0))
        series.gauge("waiting", labels, version.get("waiting", 0))
        series.gauge("queued", (version["name"], version["label"]), version.get("queued", 0))
        size = int(version.get("max_batch_size") or 0)
        if size:
            series.gauge("slots", labels, int(version.get("running", 0)) / size)
        capacity = int(version.get("kv_capacity") or 0)
        if capacity:
            series.gauge("kv", labels, int(version.get("kv_used", 0)) / capacity)


def record_usage(*, user: str, key: str, tokens: int) -> None:
    """Tokens a user (and key) used: the console's top users (never in /metrics)."""
    _series().add("usage", (user, key), tokens)


METRICS_KEY = "sluice:metrics"  # hash per series: sluice:metrics:<name>:<model>
METRICS_TTL_S = 30 * 24 * 3600

# Worker-side series: (name, kind, help, buckets)
_SERIES: dict[str, tuple[str, str, Sequence[float]]] = {
    "sluice_batch_size": ("histogram", "Sequences decoded together per engine step", BATCH_BUCKETS),
    "sluice_queue_time_seconds": ("histogram", "Job handed to the engine to its prefill", LATENCY_BUCKETS),
    "sluice_generation_tokens_total": ("counter", "Tokens generated", ()),
    "sluice_prompt_tokens_total": ("counter", "Prompt tokens prefilled", ()),
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

    @property
    def labels(self) -> tuple[str, str]:
        model, _, version = self.model.partition("@")
        return model, version or "default"

    def on_step(self, *, batch_size: int, new_tokens: int, seconds: float, prefill: bool) -> None:
        with self._lock:
            if not prefill:
                self._observe("sluice_batch_size", batch_size)
            self._add("sluice_generation_tokens_total", new_tokens)
        series = _series()
        series.add("tok_gen", self.labels, new_tokens)
        if not prefill:
            series.add("batch_sum", self.labels, batch_size)
            series.add("steps", self.labels, 1)

    def on_finish(self, result: SequenceResult) -> None:
        queue = max(0.0, result.admitted_at - result.submitted_at) if result.admitted_at is not None else None
        with self._lock:
            self._add("sluice_prompt_tokens_total", result.prompt_tokens)
            if queue is not None:
                self._observe("sluice_queue_time_seconds", queue)
        series = _series()
        series.add("tok_prompt", self.labels, result.prompt_tokens)
        if queue is not None:
            series.observe("queue", self.labels, queue)

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
                counter = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["model", "version"])
                for model, fields in found.get(name, {}).items():
                    counter.add_metric(labels(model), sum(fields.values()))
                yield counter
        yield from self._fleet(client)

    def _fleet(self, client: redis.Redis) -> Iterator[Metric]:
        for name, (kind, doc, labelnames, buckets) in FLEET_SERIES.items():
            raw: Any = client.hgetall(f"{FLEET_KEY}:{name}")
            fields = {
                (k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in (raw or {}).items()
            }
            grouped: dict[str, dict[str, float]] = defaultdict(dict)
            for key, value in fields.items():
                label_json, _, suffix = key.partition(_FIELD_SEP)
                grouped[label_json][suffix] = value
            if kind == "counter":
                counter = CounterMetricFamily(name.removesuffix("_total"), doc, labels=list(labelnames))
                for label_json, parts in grouped.items():
                    counter.add_metric(json.loads(label_json), parts.get("v", 0.0))
                yield counter
                continue
            histogram = HistogramMetricFamily(name, doc, labels=list(labelnames))
            for label_json, parts in grouped.items():
                cumulative: list[tuple[str, float]] = []
                running = 0.0
                for bound in buckets:
                    running += parts.get(f"b:{bound}", 0.0)
                    cumulative.append((str(float(bound)), running))
                cumulative.append(("+Inf", running + parts.get("b:+Inf", 0.0)))
                histogram.add_metric(json.loads(label_json), cumulative, parts.get("sum", 0.0))
            yield histogram

    def _gauges(self, client: redis.Redis) -> Iterator[Metric]:
        from inference.admission.ratelimit import RateLimiter
        from inference.versions.registry import all_versions

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
        up = GaugeMetricFamily(
            "sluice_worker_up", "1 while a worker's heartbeat is fresh, 0 once it expired", labels=["worker"]
        )
        age = GaugeMetricFamily(
            "sluice_worker_heartbeat_age_seconds",
            "Seconds since a worker's last heartbeat",
            labels=["worker"],
        )
        kv = GaugeMetricFamily(
            "sluice_kv_cache_usage_ratio",
            "Key/value cache positions in use over those allocated, per worker and version",
            labels=["worker", "model", "version"],
        )
        prefix = PrefixCacheFamilies(labels=["worker", "model", "version"])
        slots = GaugeMetricFamily(
            "sluice_batch_slots_usage_ratio",
            "Running sequences over the version's max batch size, per worker",
            labels=["worker", "model", "version"],
        )
        now = time.time()
        for worker, beat in workers_seen(client):
            up.add_metric([worker], 1.0 if beat is not None else 0.0)
            age.add_metric(
                [worker], max(0.0, now - (beat["ts"] if beat is not None else seen_at(client, worker)))
            )
            if beat is None:
                continue
            for version in beat.get("versions", []):
                engines[version["name"]][0] += int(version.get("running", 0))
                engines[version["name"]][1] += int(version.get("waiting", 0))
                labels = [worker, version["name"], version["label"]]
                if int(version.get("kv_capacity") or 0):
                    kv.add_metric(labels, int(version.get("kv_used", 0)) / int(version["kv_capacity"]))
                if int(version.get("max_batch_size") or 0):
                    slots.add_metric(labels, int(version.get("running", 0)) / int(version["max_batch_size"]))
                prefix.add(labels, version.get("prefix_cache") or {})
        yield up
        yield age
        yield kv
        yield slots
        yield from prefix.families()
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


class PrefixCacheFamilies:
    """Prefix-cache series from heartbeats (a worker's counters since it loaded the version):
    shared by the web's fleet view and a worker's own endpoint."""

    def __init__(self, labels: list[str]) -> None:
        self.lookup = CounterMetricFamily(
            "sluice_prefix_cache_lookup_tokens",
            "Prompt tokens looked up in the prefix cache (the most a hit could have covered)",
            labels=labels,
        )
        self.hit = CounterMetricFamily(
            "sluice_prefix_cache_hit_tokens",
            "Prompt tokens served from the prefix cache: prefill saved",
            labels=labels,
        )
        self.ratio = GaugeMetricFamily(
            "sluice_prefix_cache_hit_ratio", "Prefix-cache hit tokens over lookup tokens", labels=labels
        )
        self.blocks = GaugeMetricFamily(
            "sluice_prefix_cache_blocks",
            "Prefix-cache blocks in use (cached) and allocatable",
            labels=[*labels, "kind"],
        )
        self.evicted = CounterMetricFamily(
            "sluice_prefix_cache_evicted_blocks", "Prefix-cache blocks evicted for space", labels=labels
        )

    def add(self, labels: list[str], stats: dict[str, Any]) -> None:
        if not stats:
            return
        lookup, hit = int(stats.get("lookup_tokens", 0)), int(stats.get("hit_tokens", 0))
        self.lookup.add_metric(labels, lookup)
        self.hit.add_metric(labels, hit)
        self.ratio.add_metric(labels, hit / lookup if lookup else 0.0)
        self.blocks.add_metric([*labels, "used"], int(stats.get("blocks_used", 0)))
        self.blocks.add_metric([*labels, "capacity"], int(stats.get("blocks_capacity", 0)))
        self.evicted.add_metric(labels, int(stats.get("evicted_blocks", 0)))

    def families(self) -> Iterator[Metric]:
        yield from (self.lookup, self.hit, self.ratio, self.blocks, self.evicted)


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


class VersionEventCollector:
    """Model-version lifecycle events so far (activated, promoted, rolled_back, breaker_open,
    load_failed, ...), from the table: the alert on a rolled-back canary reads this."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from django.db import connection
        from django.db.models import Count

        from inference.models import ModelVersionEvent

        counter = CounterMetricFamily(
            "sluice_version_events",
            "Model-version lifecycle events, by kind",
            labels=["model", "version", "kind"],
        )
        try:
            rows = list(
                ModelVersionEvent.objects.values_list(
                    "version__served_name", "version__label", "kind"
                ).annotate(n=Count("id"))
            )
        except Exception:
            return
        finally:
            connection.close()
        for model, version, kind, count in rows:
            counter.add_metric([model, version, kind], count)
        yield counter


class StoreCollector:
    """Whether this process reaches Redis and Postgres right now (1) or not (0): a scrape
    answers even when they are down, so the alert on them can fire."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from django.db import connection

        from inference.store import get_redis

        gauge = GaugeMetricFamily("sluice_store_up", "The stores this process reaches", labels=["store"])
        try:
            get_redis().ping()
            gauge.add_metric(["redis"], 1.0)
        except Exception:
            gauge.add_metric(["redis"], 0.0)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            gauge.add_metric(["postgres"], 1.0)
        except Exception:
            gauge.add_metric(["postgres"], 0.0)
        finally:
            connection.close()
        yield gauge


class UpstreamCollector:
    """Each upstream replica's health and fleet-wide outstanding load (openai versions)."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from inference.store import get_redis
        from inference.versions.replicas import read_replicas, registered_versions

        labels = ["model", "version", "replica"]
        healthy = GaugeMetricFamily(
            "sluice_upstream_healthy", "1: in rotation, 0.5: half-open (one trial), 0: out", labels=labels
        )
        requests = GaugeMetricFamily(
            "sluice_upstream_outstanding_requests", "Requests in flight to the replica", labels=labels
        )
        tokens = GaugeMetricFamily(
            "sluice_upstream_outstanding_tokens",
            "Tokens reserved on the replica by requests in flight (prompt until the first token, "
            "then max_tokens)",
            labels=labels,
        )
        try:
            client = get_redis()
            for version, urls in registered_versions(client).items():
                model, _, label = version.partition("@")
                for replica in read_replicas(client, version, urls):
                    values = [model, label or "default", replica.url]
                    healthy.add_metric(values, replica.healthy)
                    requests.add_metric(values, replica.outstanding_requests)
                    tokens.add_metric(values, replica.outstanding_tokens)
        except Exception:  # a scrape must not fail because Redis does
            return
        yield from (healthy, requests, tokens)


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
            REGISTRY.register(VersionEventCollector())
            REGISTRY.register(StoreCollector())
            REGISTRY.register(UpstreamCollector())
            _registered = True


class UpstreamMetrics:
    """Per-replica latencies and outcomes, into the fleet series (/metrics) and the console's."""

    def __init__(self, version: str) -> None:
        model, _, label = version.partition("@")
        self.model, self.label = model, label or "default"

    def ttft(self, url: str, seconds: float) -> None:
        labels = (self.model, self.label, url)
        fleet.observe("sluice_upstream_time_to_first_token_seconds", labels, seconds)
        series_buffer().observe("up_ttft", labels, seconds)

    def itl(self, url: str, seconds: float) -> None:
        fleet.observe("sluice_upstream_inter_token_latency_seconds", (self.model, self.label, url), seconds)

    def outcome(self, url: str, result: str) -> None:
        labels = (self.model, self.label, url, result)
        fleet.count("sluice_upstream_requests_total", labels)
        series_buffer().add("up_req", labels)
