"""The console's rolling time series on the real Valkey: buckets at three resolutions, windows
that read them back, percentiles from merged histogram buckets, gauges, and points kept while
Redis is unreachable. Points are written three days back, where no live process writes."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from inference.core.redis import get_redis
from inference.observability.timeseries import BOUNDS, SeriesBuffer, read

pytestmark = pytest.mark.django_db


@pytest.fixture
def at() -> float:
    now = time.time() - 3 * 86400
    return float(int(now) - int(now) % 600 + 5)  # 5 s into a 10-minute bucket


@pytest.fixture
def n() -> str:
    """A fresh series name per test: a rerun within the buckets' lifetime starts from zero."""
    return f"t{uuid.uuid4().hex[:8]}"


def connected() -> SeriesBuffer:
    buffer = SeriesBuffer()
    buffer.connect(get_redis)
    return buffer


def test_counters_land_in_every_resolution(at: float, n: str) -> None:
    buffer = connected()
    buffer.add(n + "_requests", ["m", "v1", "succeeded", ""], at=at)
    buffer.add(n + "_requests", ["m", "v1", "succeeded", ""], 2, at=at + 12)
    buffer.add(n + "_requests", ["m", "v2", "failed", "load|failed"], at=at + 12)  # a separator in a label
    buffer.flush()

    five = read(get_redis(), "5m", now=at + 10)
    assert five.resolution == 10 and len(five.buckets) == 30
    per = five.per_bucket(n + "_requests")
    assert per[-2:] == [1.0, 3.0] and sum(per) == 4.0
    assert five.groups(n + "_requests") == {
        ("m", "v1", "succeeded", ""): 3.0,
        ("m", "v2", "failed", "load/failed"): 1.0,
    }
    hour = read(get_redis(), "1h", now=at + 10)
    assert hour.per_bucket(n + "_requests")[-1] == 4.0 and len(hour.buckets) == 60
    day = read(get_redis(), "24h", now=at + 10)
    assert day.per_bucket(n + "_requests")[-1] == 4.0 and len(day.buckets) == 144
    assert day.total(lambda parts: parts[0] == n + "_requests" and parts[2] == "v1") == 3.0
    # Ten minutes on, the 5-minute window no longer sees them; the day still does.
    assert sum(read(get_redis(), "5m", now=at + 620).per_bucket(n + "_requests")) == 0
    assert sum(read(get_redis(), "24h", now=at + 620).per_bucket(n + "_requests")) == 4.0


def test_percentiles_from_merged_buckets(at: float, n: str) -> None:
    buffer = connected()
    for _ in range(98):
        buffer.observe(n + "_latency", ["m", "v1"], 0.05, at=at)
    buffer.observe(n + "_latency", ["m", "v1"], 5.0, at=at + 11)
    buffer.observe(n + "_latency", ["m", "v1"], 5.0, at=at + 11)
    buffer.observe(n + "_latency", ["m", "v2"], 100.0, at=at)  # another label: filtered out below
    buffer.flush()
    window = read(get_redis(), "5m", now=at + 10)
    hist = window.histogram(n + "_latency", match=lambda parts: parts[2] == "v1")
    assert hist.count == 100 and hist.mean == pytest.approx((98 * 0.05 + 10.0) / 100)
    p50, p99 = hist.quantile(0.5), hist.quantile(0.99)
    assert p50 is not None and 0.04 < p50 <= 0.08  # inside the bucket that holds 0.05
    assert p99 is not None and 4.0 < p99 <= 6.0
    assert window.histogram_labels(n + "_latency") == {("m", "v1"), ("m", "v2")}
    per_bucket = window.histograms_per_bucket(n + "_latency", match=lambda parts: parts[2] == "v1")
    assert [h.count for h in per_bucket[-2:]] == [98, 2]
    assert read(get_redis(), "5m", now=at + 10).histogram(n + "_nothing").quantile(0.5) is None
    assert len(hist.counts) == len(BOUNDS) + 1


def test_gauges_keep_the_last_value_per_bucket(at: float, n: str) -> None:
    buffer = connected()
    buffer.gauge(n + "_kv", ["w1", "m@v1"], 0.25, at=at)
    buffer.gauge(n + "_kv", ["w1", "m@v1"], 0.75, at=at + 2)
    buffer.gauge(n + "_kv", ["w2", "m@v1"], 0.5, at=at + 12)
    buffer.flush()
    gauges = read(get_redis(), "5m", now=at + 10).gauges_per_bucket(n + "_kv")
    assert gauges[("w1", "m@v1")][-2:] == [0.75, None]
    assert gauges[("w2", "m@v1")][-2:] == [None, 0.5]


def test_points_are_kept_while_redis_is_unreachable(at: float, n: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens there
    buffer = SeriesBuffer()  # flushed by hand here: no background flusher is started
    buffer.add(n + "_outage", ["m"], 2, at=at)
    buffer.add(n + "_outage", ["m"], 1, at=at + 1)
    buffer.connect(lambda: dead)
    for _ in range(2):  # failed flushes keep the points, once each
        with pytest.raises(redis.ConnectionError):
            buffer.flush()
    buffer.connect(get_redis)  # Redis is back
    buffer.flush()
    assert read(get_redis(), "5m", now=at + 1).per_bucket(n + "_outage")[-1] == 3.0
