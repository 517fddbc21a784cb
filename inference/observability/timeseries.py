"""Rolling, bucketed time series in Redis: what the ops console draws, with no Prometheus.

Web and worker processes record events (a request ended, tokens were generated, a latency was
observed) into a process-local buffer; a background thread adds the buffer to Redis every
second. Each event lands in three resolutions, so that any window is a few dozen reads:

| resolution | kept   | used for a window of |
|------------|--------|----------------------|
| 10 s       | 2 h    | 5 minutes            |
| 1 min      | 7 h    | 1 hour               |
| 10 min     | 25 h   | 24 hours             |

A bucket is a Redis hash ``sluice:ts:<resolution>:<bucket start>``; its fields are
``<name>|<label>|<label>...`` (counters and sums, added with HINCRBYFLOAT); a histogram's
fields are ``h.<name>|<labels>|b<index>`` per latency bucket plus ``|sum`` and ``|n`` (its own
name space, so a counter label never reads as a bucket); gauges are set (last writer wins). Percentiles
are computed from the merged histogram buckets of a window (interpolated within a bucket).

No Django here: the engine thread and the web process both use it.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from inference.core.keys import TIMESERIES_PREFIX

logger = logging.getLogger(__name__)

PREFIX = TIMESERIES_PREFIX
RESOLUTIONS: tuple[tuple[int, int], ...] = ((10, 2 * 3600), (60, 7 * 3600), (600, 25 * 3600))
WINDOWS: dict[str, tuple[int, int]] = {"5m": (300, 10), "1h": (3600, 60), "24h": (86400, 600)}
#: Upper bounds (seconds) of the latency histograms; one more bucket above the last.
BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.5, 2.5, 4.0, 6.0,
    10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
SEP = "|"
HIST = "h."
#: Points a process keeps while Redis is unreachable (one per second per field); beyond, newer
#: points are dropped rather than growing without bound through a long outage.
MAX_PENDING = 200_000


def _clean(value: Any) -> str:
    return str(value).replace(SEP, "/")


def field(name: str, labels: Sequence[Any]) -> str:
    return SEP.join([name, *(_clean(label) for label in labels)])


class SeriesBuffer:
    """What this process recorded since its last flush."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[tuple[int, str], float] = defaultdict(float)
        self._gauges: dict[tuple[int, str], float] = {}
        self._thread: threading.Thread | None = None
        self._client: Callable[[], Any] | None = None
        # A forked child has no flusher thread (and must not inherit the parent's buffer).
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._sums = defaultdict(float)
        self._gauges = {}
        self._thread = None

    # -- recording -------------------------------------------------------------------------

    def add(self, name: str, labels: Sequence[Any], value: float = 1.0, *, at: float | None = None) -> None:
        stamp = int(at if at is not None else time.time())
        with self._lock:
            self._sums[(stamp, field(name, labels))] += value
        self._ensure_flusher()

    def observe(self, name: str, labels: Sequence[Any], seconds: float, *, at: float | None = None) -> None:
        stamp = int(at if at is not None else time.time())
        base = field(HIST + name, labels)
        index = bisect.bisect_left(BOUNDS, seconds)
        with self._lock:
            self._sums[(stamp, f"{base}{SEP}b{index}")] += 1
            self._sums[(stamp, f"{base}{SEP}sum")] += seconds
            self._sums[(stamp, f"{base}{SEP}n")] += 1
        self._ensure_flusher()

    def gauge(self, name: str, labels: Sequence[Any], value: float, *, at: float | None = None) -> None:
        stamp = int(at if at is not None else time.time())
        with self._lock:
            self._gauges[(stamp, field(name, labels))] = value
        self._ensure_flusher()

    # -- flushing --------------------------------------------------------------------------

    def connect(self, client_factory: Callable[[], Any]) -> None:
        """Where to flush (the process's Redis client, e.g. ``inference.core.redis.get_redis``)."""
        self._client = client_factory

    def _ensure_flusher(self) -> None:
        if self._thread is not None or self._client is None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sluice-timeseries", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(1.0)
            try:
                self.flush()
            except Exception:
                logger.debug("time series flush failed; kept for the next one", exc_info=True)

    def flush(self) -> None:
        if self._client is None:
            return
        with self._lock:
            sums, self._sums = self._sums, defaultdict(float)
            gauges, self._gauges = self._gauges, {}
        if not sums and not gauges:
            return
        client = self._client()
        pipe = client.pipeline(transaction=False)
        touched: set[str] = set()
        for resolution, keep in RESOLUTIONS:
            for (stamp, name), value in sums.items():
                key = f"{PREFIX}:{resolution}:{stamp - stamp % resolution}"
                pipe.hincrbyfloat(key, name, value)
                if key not in touched:
                    touched.add(key)
                    pipe.expire(key, keep)
            for (stamp, name), value in gauges.items():
                key = f"{PREFIX}:{resolution}:{stamp - stamp % resolution}"
                pipe.hset(key, name, value)
                if key not in touched:
                    touched.add(key)
                    pipe.expire(key, keep)
        try:
            pipe.execute()
        except Exception:
            with self._lock:  # Redis is unreachable: keep them for the next flush (bounded)
                if len(self._sums) + len(sums) > MAX_PENDING:
                    logger.warning("time series: Redis unreachable for long; dropping %d points", len(sums))
                    raise
                for item, value in sums.items():
                    self._sums[item] += value
                for item, value in gauges.items():
                    self._gauges.setdefault(item, value)
            raise


#: The process's buffer (connected by the web and worker at start).
series = SeriesBuffer()


@dataclass
class Window:
    """Buckets of one window, oldest first: ``(bucket start, {field: value})``."""

    name: str
    seconds: int
    resolution: int
    buckets: list[tuple[int, dict[str, float]]]

    @property
    def stamps(self) -> list[int]:
        return [stamp for stamp, _ in self.buckets]

    def total(self, predicate: Callable[[list[str]], bool]) -> float:
        return sum(
            value
            for _, fields in self.buckets
            for name, value in fields.items()
            if predicate(name.split(SEP))
        )

    def per_bucket(self, name: str, match: Callable[[list[str]], bool] | None = None) -> list[float]:
        out = []
        for _, fields in self.buckets:
            total = 0.0
            for key, value in fields.items():
                parts = key.split(SEP)
                if parts[0] == name and (match is None or match(parts)):
                    total += value
            out.append(total)
        return out

    def groups(self, name: str) -> dict[tuple[str, ...], float]:
        """Counter totals of ``name`` over the window, by label tuple."""
        found: dict[tuple[str, ...], float] = defaultdict(float)
        for _, fields in self.buckets:
            for key, value in fields.items():
                parts = key.split(SEP)
                if parts[0] == name:
                    found[tuple(parts[1:])] += value
        return dict(found)

    def histogram(
        self,
        name: str,
        match: Callable[[list[str]], bool] | None = None,
        buckets: Iterable[int] | None = None,
    ) -> Histogram:
        chosen = set(buckets) if buckets is not None else None
        merged = Histogram(counts=[0.0] * (len(BOUNDS) + 1), total=0.0, count=0.0)
        for index, (_, fields) in enumerate(self.buckets):
            if chosen is None or index in chosen:
                _accumulate(merged, fields, HIST + name, match)
        return merged

    def histograms_per_bucket(
        self, name: str, match: Callable[[list[str]], bool] | None = None
    ) -> list[Histogram]:
        """One histogram per bucket of the window (one pass over the fields)."""
        out = []
        for _, fields in self.buckets:
            histogram = Histogram(counts=[0.0] * (len(BOUNDS) + 1), total=0.0, count=0.0)
            _accumulate(histogram, fields, HIST + name, match)
            out.append(histogram)
        return out

    def gauges_per_bucket(self, name: str) -> dict[tuple[str, ...], list[float | None]]:
        """Per label tuple, the gauge's value in each bucket (``None`` where it was not set)."""
        found: dict[tuple[str, ...], list[float | None]] = {}
        for index, (_, fields) in enumerate(self.buckets):
            for key, value in fields.items():
                if not key.startswith(name + SEP):
                    continue
                parts = key.split(SEP)
                if parts[0] == name:
                    found.setdefault(tuple(parts[1:]), [None] * len(self.buckets))[index] = value
        return found

    def histogram_labels(self, name: str) -> set[tuple[str, ...]]:
        labels = set()
        name = HIST + name
        for _, fields in self.buckets:
            for key in fields:
                parts = key.split(SEP)
                if parts[0] == name and parts[-1] == "n":
                    labels.add(tuple(parts[1:-1]))
        return labels


@dataclass
class Histogram:
    counts: list[float]
    total: float
    count: float

    def quantile(self, q: float) -> float | None:
        if self.count <= 0:
            return None
        target = q * sum(self.counts)
        running = 0.0
        for index, value in enumerate(self.counts):
            if running + value >= target and value > 0:
                low = BOUNDS[index - 1] if index > 0 else 0.0
                high = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1] * 2
                return low + (high - low) * ((target - running) / value)
            running += value
        return BOUNDS[-1]

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


def _accumulate(
    into: Histogram, fields: dict[str, float], name: str, match: Callable[[list[str]], bool] | None
) -> None:
    """Add one bucket's fields of histogram ``name`` (``h.``-prefixed) whose labels match."""
    for key, value in fields.items():
        if not key.startswith(name + SEP):
            continue
        parts = key.split(SEP)
        if parts[0] != name or (match is not None and not match(parts[:-1])):
            continue
        tail = parts[-1]
        if tail == "sum":
            into.total += value
        elif tail == "n":
            into.count += value
        elif tail.startswith("b") and tail[1:].isdigit():
            into.counts[int(tail[1:])] += value


def read(client: Any, window: str, *, now: float | None = None) -> Window:
    seconds, resolution = WINDOWS[window]
    now = now if now is not None else time.time()
    last = int(now) - int(now) % resolution
    stamps = list(range(last - seconds + resolution, last + resolution, resolution))
    pipe = client.pipeline(transaction=False)
    for stamp in stamps:
        pipe.hgetall(f"{PREFIX}:{resolution}:{stamp}")
    buckets = []
    for stamp, raw in zip(stamps, pipe.execute(), strict=True):
        fields = {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in (raw or {}).items()}
        buckets.append((stamp, fields))
    return Window(name=window, seconds=seconds, resolution=resolution, buckets=buckets)
