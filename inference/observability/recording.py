"""Recording: what the web and the engines count, as it happens (metric names from DESIGN.md
§5). Export is apart, in ``export.py`` (the Prometheus collectors) — as vLLM keeps
``v1/metrics/stats.py`` apart from its loggers.

- Request-level latencies are observed where the client's experience is: in the web process
  that streams the answer (time to first token, inter-token latency, end to end).
- Engine-level series (batch size, tokens, queue time, finished requests) happen in worker
  processes, possibly on other machines. Each worker accumulates them in memory and adds
  them to Redis hashes every few seconds (`EngineMetrics.flush`); the web process exposes the
  sums at scrape time (``export.FleetCollector``), together with live gauges (jobs waiting in
  the model's Celery queue and inside engines, sequences running) read from Redis.
- Every ``record_*`` also feeds the console's time series (``timeseries.py``).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from inference.core.keys import FLEET_KEY, METRICS_KEY
from inference.core.redis import get_redis
from inference.observability.timeseries import series

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
        while True:
            time.sleep(1.0)
            with contextlib.suppress(Exception):  # Redis unreachable: the next flush tries again
                self.flush()

    def flush(self) -> None:
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


METRICS_TTL_S = 30 * 24 * 3600

# Worker-side series: (name, kind, help, buckets)
_SERIES: dict[str, tuple[str, str, Sequence[float]]] = {
    "sluice_batch_size": ("histogram", "Sequences decoded together per engine step", BATCH_BUCKETS),
    "sluice_queue_time_seconds": ("histogram", "Job handed to the engine to its prefill", LATENCY_BUCKETS),
    "sluice_generation_tokens_total": ("counter", "Tokens generated", ()),
    "sluice_prompt_tokens_total": ("counter", "Prompt tokens prefilled", ()),
}


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
