"""The console's charts: time series of one scope over a window, as Chart.js datasets (rates,
quantiles, gauges), built from the rolling series in Redis
(``inference.observability.timeseries``). The tables and banners beside them are in
``selectors.py``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dashboard.scope import Scope
from inference.observability.timeseries import Histogram, Window

OUTCOMES = ("succeeded", "failed", "cancelled", "rejected")


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def quantiles(histogram: Histogram) -> dict[str, float | None]:
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


def both(
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


def charts(window: Window, scope: Scope, now: float) -> dict[str, dict[str, Any]]:
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
    hits, misses = (window.per_bucket("cache", both(req, labelled(3, r))) for r in ("hit", "miss"))
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
