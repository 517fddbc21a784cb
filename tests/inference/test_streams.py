"""Job stream, lease and cancel keys on a real Valkey (the one the test settings started)."""

from __future__ import annotations

import time
import uuid

import pytest

from inference.core.redis import get_redis
from inference.engine import StepEvent
from inference.jobstream import StreamEntry
from inference.store import get_streams
from inference.streams import RedisTokenSink, cancel_key, lease_key, stream_key
from tests.support.redis_entries import stream_entries


def token(text: str, ids: list[int], logprobs: list[float] | None = None) -> StreamEntry:
    return StreamEntry.token(
        text=text, token_ids=ids, logprobs=logprobs or [0.0] * len(ids), completion_tokens=len(ids)
    )


@pytest.fixture
def job_id() -> str:
    return str(uuid.uuid4())


def test_open_creates_a_stream_with_a_ttl(job_id: str) -> None:
    streams = get_streams()
    entry_id = streams.open(job_id)
    assert stream_entries(job_id) == [(entry_id, {"t": "queued"})]
    assert 0 < get_redis().ttl(stream_key(job_id)) <= streams.open_ttl_s


def test_appends_are_fenced_by_the_lease(job_id: str) -> None:
    streams = get_streams()
    streams.open(job_id)
    assert streams.lease_acquire(job_id, "attempt-1", ttl_s=5)
    assert not streams.lease_acquire(job_id, "attempt-2", ttl_s=5)  # held
    assert streams.append(job_id, token("a", [1]), lease_token="attempt-1")
    assert not streams.append(job_id, token("b", [2]), lease_token="attempt-2")
    assert not streams.lease_renew(job_id, "attempt-2", ttl_s=5)
    assert streams.lease_renew(job_id, "attempt-1", ttl_s=5)
    streams.lease_release(job_id, "attempt-2")  # not the holder: no effect
    assert streams.lease_holders([job_id]) == {job_id: "attempt-1"}
    streams.lease_release(job_id, "attempt-1")
    assert streams.lease_holders([job_id]) == {job_id: None}
    assert streams.progress(job_id).text == "a"


def test_lease_expires(job_id: str) -> None:
    streams = get_streams()
    assert streams.lease_acquire(job_id, "dead-worker", ttl_s=0.05)
    time.sleep(0.1)
    assert streams.lease_acquire(job_id, "next", ttl_s=5)


def test_progress_rebuilds_what_was_streamed(job_id: str) -> None:
    streams = get_streams()
    streams.open(job_id)
    streams.lease_acquire(job_id, "t", ttl_s=5)
    streams.append(job_id, StreamEntry.start(1), lease_token="t")
    streams.append(job_id, token("Hel", [5, 6], [-0.5, -1]), lease_token="t")
    streams.append(job_id, token("lo", [7], [-0.25]), lease_token="t")
    progress = streams.progress(job_id)
    assert progress.token_ids == [5, 6, 7]
    assert progress.logprobs == [-0.5, -1.0, -0.25]
    assert progress.text == "Hello"
    assert not progress.ended
    assert streams.finish(
        job_id, StreamEntry.end(status="succeeded", finish_reason="eos", usage=None), lease_token="t"
    )
    assert streams.progress(job_id).ended
    assert get_redis().ttl(stream_key(job_id)) <= streams.stream_ttl_s


def test_sink_reports_cancel_and_lost_lease_in_one_round_trip() -> None:
    streams = get_streams()
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    for job_id in (a, b, c):
        streams.open(job_id)
        streams.lease_acquire(job_id, f"lease-{job_id}", ttl_s=5)
    streams.request_cancel(b)
    get_redis().set(lease_key(c), "someone-else")
    sink = RedisTokenSink(streams)
    events = [
        StepEvent(
            key=a, meta={"lease": f"lease-{a}"}, token_ids=[1], logprobs=[-0.1], text="x", completion_tokens=1
        ),
        StepEvent(
            key=c, meta={"lease": f"lease-{c}"}, token_ids=[2], logprobs=[-0.2], text="y", completion_tokens=1
        ),
    ]
    verdict = sink.publish(events, [(a, {"lease": f"lease-{a}"}), (b, {"lease": f"lease-{b}"})])
    assert verdict == {b: "cancelled", c: "lease_lost"}
    assert streams.progress(a).text == "x"
    assert streams.progress(c).text == ""  # fenced out
    assert get_redis().ttl(cancel_key(b)) > 0


def test_no_job_key_is_left_without_ttl(job_id: str) -> None:
    streams = get_streams()
    client = get_redis()
    client.delete(stream_key(job_id))
    # A stream created by a (fenced) append rather than by open() still gets a TTL.
    streams.lease_acquire(job_id, "t", ttl_s=5)
    streams.append(job_id, token("z", [1]), lease_token="t")
    streams.request_cancel(job_id)
    streams.mark_requeued(job_id, ttl_s=60)
    for key in client.scan_iter(match=f"sluice:job:{{{job_id}}}:*"):
        assert client.ttl(key) > 0, key


async def test_blocking_reads_longer_than_redis_py_default_timeout() -> None:
    """An SSE stream waits in XREAD BLOCK for up to the keepalive interval (15 s by default);
    redis-py's default socket timeout (5 s) must not cut it (it once broke queued streams)."""
    from inference.core.redis import async_redis

    client = async_redis()
    started = time.monotonic()
    assert await client.xread({stream_key(str(uuid.uuid4())): "0-0"}, block=6000) == []
    assert time.monotonic() - started >= 5.9
