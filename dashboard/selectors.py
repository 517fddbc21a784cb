"""What the operations console shows: one snapshot of the fleet over a window, computed from
the rolling series in Redis (``inference.observability.timeseries``), the workers' heartbeats, the registry
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
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from dashboard.charts import OUTCOMES, both, charts, labelled, quantiles
from dashboard.scope import Scope
from gateway.models import ApiKey
from inference.core.keys import SUPERVISOR_KEY
from inference.core.redis import get_redis
from inference.models import EventKind, ModelVersionEvent
from inference.observability.timeseries import WINDOWS, Window, read
from inference.versions.health import open_breakers
from inference.versions.registry import all_versions
from inference.versions.replicas import read_replicas, registered_versions
from inference.worker.heartbeat import seen_at, workers_seen

logger = logging.getLogger(__name__)

TOP_USERS = 10


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
                "ttft": quantiles(window.histogram("ttft", match)),
                "itl": quantiles(window.histogram("itl", match)),
                "e2e": quantiles(window.histogram("e2e", match)),
                "queue": quantiles(window.histogram("queue", match)),
                "cache_hit_rate": round(100 * hit / (hit + miss), 1) if hit + miss else None,
            }
        )
    return rows


def _upstreams_table(client: Any, window: Window, scope: Scope) -> list[dict[str, Any]]:
    """Every upstream replica of an openai version: health, fleet-wide load, and from the
    window its time to first token and requests by result."""
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
                    "ttft": quantiles(window.histogram("up_ttft", match)),
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
        waits.append({"model": model, "policy": policy, **quantiles(histogram)})
    retrieval = []
    for (model,) in sorted(window.histogram_labels("rag")):
        if scope.model and model != scope.model:
            continue
        retrieval.append({"model": model, **quantiles(window.histogram("rag", labelled(1, model)))})
    return {"refusals": refusals, "admitted": admitted, "waits": waits, "retrieval": retrieval}


def _top_users(window: Window) -> list[dict[str, Any]]:
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
            seen = seen_at(client, name)
            age = now - seen if seen else None
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
                    "attention": version.get("attention", ""),
                    "attention_fallback": version.get("attention_fallback", ""),
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
    raw = client.get(SUPERVISOR_KEY)
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
        charts=charts(current, scope, now),
        versions=versions,
        workers=workers,
        upstreams=_upstreams_table(client, current, scope),
        admission=_admission_table(current, scope),
        top_users=top,
        alerts=alerts,
        totals={
            status: int(current.total(both(labelled(0, "req"), labelled(3, status)))) for status in OUTCOMES
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
