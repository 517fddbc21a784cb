"""Export: what the recorders counted, shown to Prometheus. The web's ``/metrics`` sums the
fleet's series from Redis (``FleetCollector``) beside live gauges read at scrape time (queues,
replicas, the database pool, dead letters, version events, the stores); a worker's own endpoint
shows its prefix cache (``PrefixCacheFamilies``). Recording lives in ``recording.py``, the
console's time series in ``timeseries.py``, the usage rows in ``usage.py``."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import redis
from django.db import connection, connections
from django.db.models import Count
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from inference.admission.ratelimit import RateLimiter
from inference.core.broker import celery_queue_keys
from inference.core.keys import FLEET_KEY, METRICS_KEY
from inference.core.redis import get_redis
from inference.models import DeadLetter, ModelVersionEvent
from inference.observability.recording import _FIELD_SEP, _SERIES, FLEET_SERIES
from inference.versions.registry import all_versions
from inference.versions.replicas import read_replicas, registered_versions
from inference.worker.heartbeat import seen_at, workers_seen


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
        attention = GaugeMetricFamily(
            "sluice_attention_kernel",
            "1 for the attention a local version runs on a worker: native (Sluice's C++ kernel) or "
            "gemm (torch's batched GEMMs: the kernel was not built, failed to load or does not fit)",
            labels=["worker", "model", "version", "kernel"],
        )
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
                if version.get("attention"):
                    attention.add_metric([*labels, str(version["attention"])], 1.0)
        yield up
        yield age
        yield kv
        yield slots
        yield attention
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

    with _register_lock:
        if not _registered:
            REGISTRY.register(FleetCollector(get_redis))
            REGISTRY.register(DatabasePoolCollector())
            REGISTRY.register(DeadLetterCollector())
            REGISTRY.register(VersionEventCollector())
            REGISTRY.register(StoreCollector())
            REGISTRY.register(UpstreamCollector())
            _registered = True
