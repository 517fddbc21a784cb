"""What the operations console shows: one snapshot of the fleet over a window, computed from
the rolling series in Redis (``inference.timeseries``), the workers' heartbeats, the registry
and a few rows of Postgres. The page draws the first snapshot and the live stream sends a new
one every ``SLUICE_DASHBOARD_REFRESH_S``.

The banners are computed here from the same series over the last five minutes, so the
embedded default (no Prometheus) warns about what docker/prometheus/alerts.yml alerts on.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from inference.store import get_redis
from inference.timeseries import WINDOWS, Histogram, Window, read
from inference.versions.health import open_breakers
from inference.versions.registry import all_versions
from inference.worker.heartbeat import workers_seen

logger = logging.getLogger(__name__)

OUTCOMES = ("succeeded", "failed", "cancelled", "rejected")
TOP_USERS = 10


@dataclass(frozen=True)
class Scope:
    """Which series the charts draw: the whole fleet, one served name, or one version."""

    model: str = ""
    version: str = ""

    @classmethod
    def parse(cls, value: str) -> Scope:
        model, _, version = (value or "").partition("@")
        return cls(model=model, version=version)

    def matches(self, model: str, version: str) -> bool:
        return (not self.model or model == self.model) and (not self.version or version == self.version)

    def labels(self, offset: int = 1) -> Callable[[list[str]], bool]:
        """A match on field parts whose labels at ``offset`` are (model, version)."""

        def match(parts: list[str]) -> bool:
            if len(parts) < offset + 2:
                return not self.model
            return self.matches(parts[offset], parts[offset + 1])

        return match

    def __str__(self) -> str:
        return f"{self.model}@{self.version}" if self.version else self.model


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def _quantiles(histogram: Histogram) -> dict[str, float | None]:
    return {
        "p50": _ms(histogram.quantile(0.5)),
        "p99": _ms(histogram.quantile(0.99)),
        "n": int(histogram.count),
    }


def labelled(offset: int, *values: str) -> Callable[[list[str]], bool]:
    """A match on field parts whose labels from ``offset`` on are ``values``."""
    wanted = list(values)

    def match(parts: list[str]) -> bool:
        return parts[offset : offset + len(wanted)] == wanted

    return match


def _both(
    first: Callable[[list[str]], bool], second: Callable[[list[str]], bool]
) -> Callable[[list[str]], bool]:
    return lambda parts: first(parts) and second(parts)


def _rates(values: list[float], window: Window, now: float) -> list[float]:
    """Per-second rates; a bucket still filling (the newest, where it is drawn) is divided by
    the time it has been filling, not by its whole span."""
    out = []
    for (start, _), value in zip(window.buckets, values, strict=True):
        span = max(1.0, min(float(window.resolution), now - start))
        out.append(round(value / span, 3))
    return out


def _time_labels(window: Window, now: float) -> list[str]:
    fmt = "%H:%M:%S" if window.resolution < 60 else "%H:%M"
    labels = [time.strftime(fmt, time.localtime(stamp)) for stamp in window.stamps]
    if labels and now - window.stamps[-1] < window.resolution:
        labels[-1] += " (so far)"  # the bucket still filling, marked as partial
    return labels


def _dataset(label: str, data: list[Any], color: str, **extra: Any) -> dict[str, Any]:
    return {"label": label, "data": data, "borderColor": color, "backgroundColor": color, **extra}


# Colours the unfold theme defines (CSS variables are resolved by unfold's chart script on
# the first draw; the live updates reuse the resolved values).
COLORS = ["#9333ea", "#16a34a", "#dc2626", "#f59e0b", "#2563eb", "#0891b2", "#db2777", "#65a30d"]
OUTCOME_COLORS = {"succeeded": "#16a34a", "failed": "#dc2626", "cancelled": "#f59e0b", "rejected": "#6b7280"}


#: Windows whose buckets are this short leave the one still filling out of their charts.
PARTIAL_BUCKET_MIN_S = 60


def _charts(window: Window, scope: Scope, now: float) -> dict[str, dict[str, Any]]:
    """Every chart's series. A bucket with no sample is a gap (None: no line is drawn across
    it), not a zero. The newest bucket is still filling, and processes add their points up to
    SLUICE_METRICS_FLUSH_S late: drawn in a 10 s bucket it dipped at every chart's right edge,
    so the 5 minute window ends at the last whole bucket (its cards and tables count up to
    now). Minute and ten-minute buckets are drawn as they fill, marked "(so far)", rates over
    the time filled, so the 1 and 24 hour windows show the last minutes without waiting."""
    if window.resolution < PARTIAL_BUCKET_MIN_S:
        window = Window(
            name=window.name,
            seconds=window.seconds,
            resolution=window.resolution,
            buckets=window.buckets[:-1],
        )
    labels = _time_labels(window, now)
    req = scope.labels()

    def outcome(status: str) -> Callable[[list[str]], bool]:
        return lambda parts: req(parts) and len(parts) > 3 and parts[3] == status

    requests = [
        _dataset(
            status, _rates(window.per_bucket("req", outcome(status)), window, now), OUTCOME_COLORS[status]
        )
        for status in OUTCOMES
    ]
    tokens = [
        _dataset("generated/s", _rates(window.per_bucket("tok_gen", req), window, now), COLORS[0]),
        _dataset("prefilled/s", _rates(window.per_bucket("tok_prompt", req), window, now), COLORS[4]),
    ]

    def percentile_lines(name: str, match: Callable[[list[str]], bool]) -> list[dict[str, Any]]:
        per_bucket = window.histograms_per_bucket(name, match)
        return [
            _dataset("p50", [_ms(h.quantile(0.5)) for h in per_bucket], COLORS[4]),
            _dataset("p99", [_ms(h.quantile(0.99)) for h in per_bucket], COLORS[2]),
        ]

    queue_lines = [
        _dataset(
            "queue p99",
            [_ms(h.quantile(0.99)) for h in window.histograms_per_bucket("queue", req)],
            COLORS[3],
        ),
        _dataset(
            "admission wait p99",
            [
                _ms(h.quantile(0.99))
                for h in window.histograms_per_bucket(
                    "wait", lambda parts: not scope.model or (len(parts) > 1 and parts[1] == scope.model)
                )
            ],
            COLORS[5],
        ),
    ]

    def summed(name: str, offset: int) -> list[float | None]:
        """A gauge summed over the workers (or queues) that reported it in each bucket."""
        totals: list[float | None] = [None] * len(window.buckets)
        for key, values in window.gauges_per_bucket(name).items():
            if len(key) < offset + 2 or not scope.matches(key[offset], key[offset + 1]):
                continue
            for index, value in enumerate(values):
                if value is not None:
                    totals[index] = (totals[index] or 0.0) + value
        return totals

    steps = window.per_bucket("steps", req)
    batch = [
        round(b / s, 2) if s else None
        for b, s in zip(window.per_bucket("batch_sum", req), steps, strict=True)
    ]
    sequences = [
        _dataset("running", summed("running", 1), COLORS[1]),
        _dataset("waiting in engines", summed("waiting", 1), COLORS[3]),
        _dataset("queued", summed("queued", 0), COLORS[2]),
        _dataset("mean batch size", batch, COLORS[4]),
    ]
    kv = []
    for index, (key, values) in enumerate(sorted(window.gauges_per_bucket("kv").items())):
        if len(key) >= 3 and scope.matches(key[1], key[2]):
            kv.append(
                _dataset(
                    f"{key[0]} {key[1]}@{key[2]}",
                    [round(v * 100, 1) if v is not None else None for v in values],
                    COLORS[index % len(COLORS)],
                )
            )
    errors = []
    versions = sorted({key[:2] for key in window.groups("req") if len(key) >= 2})
    for index, (model, version) in enumerate(versions):
        if not scope.matches(model, version):
            continue

        def of(status: str, model: str = model, version: str = version) -> list[float]:
            return window.per_bucket("req", lambda p: p[1:4] == [model, version, status])

        failed, succeeded = of("failed"), of("succeeded")
        errors.append(
            _dataset(
                f"{model}@{version}",
                [
                    round(100 * f / (f + s), 2) if f + s else None
                    for f, s in zip(failed, succeeded, strict=True)
                ],
                COLORS[index % len(COLORS)],
            )
        )
    hits, misses = (window.per_bucket("cache", _both(req, labelled(3, r))) for r in ("hit", "miss"))
    cache = [
        _dataset(
            "hit rate %",
            [round(100 * h / (h + m), 1) if h + m else None for h, m in zip(hits, misses, strict=True)],
            COLORS[1],
        )
    ]
    return {
        "requests": {"labels": labels, "datasets": requests},
        "tokens": {"labels": labels, "datasets": tokens},
        "ttft": {"labels": labels, "datasets": percentile_lines("ttft", req)},
        "itl": {"labels": labels, "datasets": percentile_lines("itl", req)},
        "e2e": {"labels": labels, "datasets": percentile_lines("e2e", req)},
        "queue": {"labels": labels, "datasets": queue_lines},
        "sequences": {"labels": labels, "datasets": sequences},
        "kv": {"labels": labels, "datasets": kv},
        "errors": {"labels": labels, "datasets": errors},
        "cache": {"labels": labels, "datasets": cache},
    }


def _versions_table(window: Window, scope: Scope) -> list[dict[str, Any]]:
    registry = {(v.name, v.label): v for v in all_versions() if v.status != "draft"}
    seen = set(registry) | {key[:2] for key in window.groups("req") if len(key) >= 2}
    seen |= {key[:2] for key in window.histogram_labels("ttft") if len(key) >= 2}
    try:
        breakers = open_breakers([f"{m}@{v}" for m, v in seen])
    except Exception:
        breakers = set()
    requests = window.groups("req")
    tokens = window.groups("tok_gen")
    cache = window.groups("cache")
    rows: list[dict[str, Any]] = []
    for model, version in sorted(seen):
        if not scope.matches(model, version):
            continue
        by_status: dict[str, float] = defaultdict(float)
        reasons: dict[str, float] = defaultdict(float)
        for key, value in requests.items():
            if key[:2] == (model, version) and len(key) >= 4:
                by_status[key[2]] += value
                if key[2] == "failed":
                    reasons[key[3]] += value
        done = by_status["succeeded"] + by_status["failed"]

        def match(parts: list[str], model: str = model, version: str = version) -> bool:
            return parts[1:3] == [model, version]

        served = registry.get((model, version))
        hit = cache.get((model, version, "hit"), 0.0)
        miss = cache.get((model, version, "miss"), 0.0)
        rows.append(
            {
                "model": model,
                "version": version,
                "status": served.status if served is not None else "gone",
                "weight": served.weight if served is not None else 0,
                "breaker_open": f"{model}@{version}" in breakers,
                "requests": {status: int(by_status[status]) for status in OUTCOMES},
                "failures": {reason: int(n) for reason, n in sorted(reasons.items())},
                "error_rate": round(100 * by_status["failed"] / done, 2) if done else None,
                "tokens_per_s": round(tokens.get((model, version), 0.0) / window.seconds, 2),
                "ttft": _quantiles(window.histogram("ttft", match)),
                "itl": _quantiles(window.histogram("itl", match)),
                "e2e": _quantiles(window.histogram("e2e", match)),
                "queue": _quantiles(window.histogram("queue", match)),
                "cache_hit_rate": round(100 * hit / (hit + miss), 1) if hit + miss else None,
            }
        )
    return rows


def _upstreams_table(client: Any, window: Window, scope: Scope) -> list[dict[str, Any]]:
    """Every upstream replica of an openai version: health, fleet-wide load, and from the
    window its time to first token and requests by result."""
    from inference.versions.replicas import read_replicas, registered_versions

    requests = window.groups("up_req")
    rows: list[dict[str, Any]] = []
    for key, urls in sorted(registered_versions(client).items()):
        model, _, version = key.partition("@")
        if not scope.matches(model, version):
            continue
        for replica in read_replicas(client, key, urls):

            def match(
                parts: list[str], model: str = model, version: str = version, url: str = replica.url
            ) -> bool:
                return parts[1:4] == [model, version, url]

            results = {
                result: int(n)
                for (m, v, url, result), n in requests.items()
                if (m, v, url) == (model, version, replica.url)
            }
            rows.append(
                {
                    "version": key,
                    "replica": replica.url,
                    "state": replica.state,
                    "failures": replica.failures,
                    "error": replica.error,
                    "outstanding_requests": replica.outstanding_requests,
                    "outstanding_tokens": replica.outstanding_tokens,
                    "requests": results,
                    "ttft": _quantiles(window.histogram("up_ttft", match)),
                }
            )
    return rows


def _admission_table(window: Window, scope: Scope) -> dict[str, Any]:
    decisions = window.groups("rl")
    refusals = [
        {"policy": policy, "reason": result, "count": int(count)}
        for (policy, result), count in sorted(decisions.items())
        if result != "admitted" and count
    ]
    admitted = {policy: int(count) for (policy, result), count in decisions.items() if result == "admitted"}
    waits = []
    for model, policy in sorted(window.histogram_labels("wait")):
        if scope.model and model != scope.model:
            continue
        histogram = window.histogram("wait", labelled(1, model, policy))
        waits.append({"model": model, "policy": policy, **_quantiles(histogram)})
    retrieval = []
    for (model,) in sorted(window.histogram_labels("rag")):
        if scope.model and model != scope.model:
            continue
        retrieval.append({"model": model, **_quantiles(window.histogram("rag", labelled(1, model)))})
    return {"refusals": refusals, "admitted": admitted, "waits": waits, "retrieval": retrieval}


def _top_users(window: Window) -> list[dict[str, Any]]:
    from gateway.models import ApiKey

    totals = sorted(window.groups("usage").items(), key=lambda item: -item[1])[:TOP_USERS]
    key_ids = [int(key) for (_, key), _ in totals if key.isdigit()]
    names = {
        pk: f"{name or 'key'} ({prefix}…)"
        for pk, name, prefix in ApiKey.objects.filter(pk__in=key_ids).values_list("pk", "name", "prefix")
    }
    return [
        {
            "user": user,
            "key": names.get(int(key), key) if key.isdigit() else "session",
            "tokens": int(tokens),
            "tokens_per_s": round(tokens / window.seconds, 2),
        }
        for (user, key), tokens in totals
    ]


def _workers(client: Any, now: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, beat in workers_seen(client):
        if beat is None:
            seen: Any = client.hget("sluice:workers:seen", name)
            age = now - float(seen) if seen else None
            rows.append(
                {"name": name, "state": "down", "age": round(age, 1) if age else None, "versions": []}
            )
            continue
        age = now - float(beat.get("ts", now))
        versions = []
        for version in beat.get("versions", []):
            size = int(version.get("max_batch_size") or 0)
            capacity = int(version.get("kv_capacity") or 0)
            versions.append(
                {
                    "key": version.get("key", ""),
                    "status": version.get("status", ""),
                    "error": version.get("error", ""),
                    "running": int(version.get("running", 0)),
                    "waiting": int(version.get("waiting", 0)),
                    "slots": round(100 * int(version.get("running", 0)) / size, 1) if size else None,
                    "kv": round(100 * int(version.get("kv_used", 0)) / capacity, 1) if capacity else None,
                }
            )
        rows.append(
            {
                "name": name,
                "state": "stale" if age > settings.SLUICE_WORKER_STALE_S else "ok",
                "age": round(age, 1),
                "backend": beat.get("backend", ""),
                "models": beat.get("models", []),
                "running": int(beat.get("running", 0)),
                "waiting": int(beat.get("waiting", 0)),
                "uptime_s": round(now - float(beat.get("started_at", now))),
                "versions": versions,
            }
        )
    return rows


def _queue_growing(window: Window) -> list[str]:
    """Served versions whose queue grew over the whole window (never shrank, and ended higher)."""
    growing = []
    for key, values in window.gauges_per_bucket("queued").items():
        points = [v for v in values if v is not None]
        covered = sum(1 for v in values if v is not None) * window.resolution
        if covered < window.seconds * 0.8 or len(points) < 3:
            continue
        if points[-1] > points[0] and all(b >= a for a, b in itertools.pairwise(points)):
            growing.append("@".join(key))
    return growing


def _alerts(recent: Window, workers: list[dict[str, Any]]) -> list[dict[str, str]]:
    from inference.models import EventKind, ModelVersionEvent

    alerts: list[dict[str, str]] = []
    # Latency alerts: (alert, histogram, what it is called, its threshold setting, decimals).
    latency_checks = (
        ("TtftP99High", "ttft", "TTFT p99", "SLUICE_ALERT_TTFT_P99_S", 2),
        ("E2eP99High", "e2e", "end-to-end p99", "SLUICE_ALERT_E2E_P99_S", 1),
    )
    for model, version in sorted(recent.histogram_labels("ttft")):
        match = (lambda m, v: lambda parts: parts[1:3] == [m, v])(model, version)
        for name, histogram, what, setting, decimals in latency_checks:
            p99 = recent.histogram(histogram, match).quantile(0.99)
            threshold = float(getattr(settings, setting))
            if p99 is not None and p99 > threshold:
                alerts.append(
                    {
                        "name": name,
                        "text": f"{model}@{version}: {what} {p99:.{decimals}f} s over 5 min "
                        f"(threshold {threshold:g} s)",
                    }
                )
    by_version: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key, value in recent.groups("req").items():
        if len(key) >= 4:
            by_version[(key[0], key[1])][key[2]] += value
    for (model, version), counts in sorted(by_version.items()):
        done = counts["succeeded"] + counts["failed"]
        if done and counts["failed"] / done > settings.SLUICE_ALERT_ERROR_RATE:
            alerts.append(
                {
                    "name": "ErrorRateHigh",
                    "text": f"{model}@{version}: {100 * counts['failed'] / done:.1f} % of requests failed "
                    f"in the last 5 min ({int(counts['failed'])} of {int(done)})",
                }
            )
    for grown in _queue_growing(recent):
        alerts.append({"name": "QueueGrowing", "text": f"{grown}: the queue has grown for 5 minutes"})
    for worker in workers:
        if worker["state"] == "down":
            alerts.append({"name": "WorkerDown", "text": f"worker {worker['name']} stopped beating"})
    since = timezone.now() - timedelta(seconds=settings.SLUICE_ALERT_ROLLBACK_WINDOW_S)
    rollbacks = ModelVersionEvent.objects.filter(
        kind=EventKind.ROLLED_BACK, created_at__gte=since
    ).select_related("version")
    for event in rollbacks.order_by("-created_at")[:5]:
        alerts.append(
            {
                "name": "CanaryRolledBack",
                "text": f"{event.version.served_name}@{event.version.label} rolled back "
                f"{timezone.localtime(event.created_at):%H:%M:%S} by {event.actor or 'auto'}: {event.reason}",
            }
        )
    return alerts


def _supervisor(client: Any) -> dict[str, Any]:
    raw = client.get("sluice:supervisor")
    return dict(json.loads(raw).get("processes", {})) if raw else {}


def dashboard_snapshot(*, window: str = "5m", scope: Scope | None = None) -> dict[str, Any]:
    """Everything the console draws, as JSON-ready data. A store that cannot be reached is a
    banner, not an error page."""
    scope = scope or Scope()
    if window not in WINDOWS:
        window = "5m"
    now = time.time()
    alerts: list[dict[str, str]] = []
    snapshot: dict[str, Any] = {"window": window, "scope": str(scope), "at": now}
    try:
        client = get_redis()
        current = read(client, window, now=now)
        recent = current if window == "5m" else read(client, "5m", now=now)
        workers = _workers(client, now)
        supervisor = _supervisor(client)
    except Exception as exc:
        logger.warning("dashboard: Redis unreachable", exc_info=True)
        alerts.append({"name": "RedisDown", "text": f"Redis is unreachable: {type(exc).__name__}"})
        snapshot.update(
            alerts=alerts, charts={}, versions=[], workers=[], upstreams=[], admission={}, top_users=[]
        )
        return snapshot
    try:
        versions = _versions_table(current, scope)
        top = _top_users(current)
        alerts.extend(_alerts(recent, workers))
    except Exception as exc:
        logger.warning("dashboard: Postgres unreachable", exc_info=True)
        alerts.append({"name": "PostgresDown", "text": f"Postgres is unreachable: {type(exc).__name__}"})
        versions, top = [], []
    for name, state in supervisor.items():
        if state.get("crash_loop") or state.get("restarting"):
            alerts.append(
                {
                    "name": "CrashLoop" if state.get("crash_loop") else "Restarting",
                    "text": f"{name}: {state.get('crashes', 0)} crash(es) in the last minute, "
                    f"last exit: {state.get('last_exit', '?')}",
                }
            )
    snapshot.update(
        charts=_charts(current, scope, now),
        versions=versions,
        workers=workers,
        upstreams=_upstreams_table(client, current, scope),
        admission=_admission_table(current, scope),
        top_users=top,
        alerts=alerts,
        totals={
            status: int(current.total(_both(labelled(0, "req"), labelled(3, status)))) for status in OUTCOMES
        },
    )
    return snapshot


def scopes() -> list[str]:
    """The choices of the scope selector: every served name and version."""
    names: set[str] = set()
    for version in all_versions():
        if version.status != "draft":
            names.add(version.name)
            names.add(version.key)
    return sorted(names)
