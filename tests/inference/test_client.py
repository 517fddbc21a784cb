"""The job client's read side against the suite's real Valkey (and, where a job's row is read,
the test database): following a stream from a cursor, keepalives, a requeued job's earlier
end, an expired or incomplete stream completed from the row, waiting for the end, the cancel
flag. The streams are written as a worker writes them (`JobStreams`); no worker runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from inference.client import job_client, valid_cursor
from inference.core.redis import get_redis
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job, JobStatus
from inference.store import get_streams
from inference.streams import cancel_key, stream_key
from tests.conftest import TEST_MODEL_NAME


def token(text: str, ids: list[int]) -> StreamEntry:
    return StreamEntry.token(text=text, token_ids=ids, logprobs=[-0.5] * len(ids), completion_tokens=len(ids))


def succeeded() -> StreamEntry:
    return StreamEntry.end(
        status="succeeded",
        finish_reason="eos",
        usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    )


@pytest.fixture
def job_id() -> Iterator[str]:
    job_id = str(uuid.uuid4())
    yield job_id
    get_redis().delete(stream_key(job_id), cancel_key(job_id))


def write(job_id: str, *entries: StreamEntry) -> None:
    streams = get_streams()
    for entry in entries:
        if entry.kind == EntryKind.END:
            assert streams.finish(job_id, entry)
        else:
            assert streams.append(job_id, entry)


def shape(entries: Sequence[StreamEntry | None]) -> list[tuple[str, str] | None]:
    return [None if e is None else (e.kind, e.text or e.status) for e in entries]


async def followed(job_id: str, **options: object) -> list[StreamEntry | None]:
    return [entry async for entry in job_client.follow(job_id, **options)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0-0", True),
        ("1718000000000-12", True),
        (f"{2**64 - 1}-{2**64 - 1}", True),
        (f"{2**64}-0", False),  # past Redis's 64-bit ids
        ("12", False),
        ("12-", False),
        ("-3", False),
        ("1-a", False),
        ("³-1", False),  # a digit to str.isdigit(), not to int()
        ("1-2-3", False),
    ],
)
def test_a_cursor_is_a_redis_stream_id(value: str, valid: bool) -> None:
    assert valid_cursor(value) is valid


async def test_a_stream_is_followed_to_its_end_and_resumed_from_any_cursor(job_id: str) -> None:
    get_streams().open(job_id)
    write(job_id, StreamEntry.start(1, prompt_ids=[7, 8]), token("Hel", [5]), token("lo", [6]), succeeded())
    stored = job_client.entries(job_id)
    assert shape(stored) == [
        ("queued", ""),
        ("start", ""),
        ("tok", "Hel"),
        ("tok", "lo"),
        ("end", "succeeded"),
    ]
    assert stored[1].prompt_ids == [7, 8] and stored[2].token_ids == [5] and stored[2].logprobs == [-0.5]
    assert stored[4].usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    every = await followed(job_id)
    assert [e.id for e in every if e is not None] == [e.id for e in stored]
    resumed = await followed(job_id, after=stored[2].id)
    assert shape(resumed) == [("tok", "lo"), ("end", "succeeded")]
    # A client that saw the end, or names a cursor past it, gets nothing and is not kept waiting.
    assert await followed(job_id, after=stored[4].id) == []
    assert await followed(job_id, after=f"{2**63}-0") == []
    assert job_client.entries(str(uuid.uuid4())) == []


async def test_a_quiet_stream_ticks_keepalives_and_goes_on_when_the_worker_writes(job_id: str) -> None:
    get_streams().open(job_id)
    seen: list[StreamEntry | None] = []
    async for entry in job_client.follow(job_id, keepalive_s=0.05):
        seen.append(entry)
        if entry is None and len(seen) == 2:  # the queued entry, then a quiet interval
            write(job_id, token("Hi", [9]), succeeded())
    assert shape(seen) == [("queued", ""), None, ("tok", "Hi"), ("end", "succeeded")]


async def test_an_end_a_requeue_continued_is_not_the_end(job_id: str) -> None:
    get_streams().open(job_id)
    write(
        job_id,
        StreamEntry.start(1),
        token("a", [1]),
        StreamEntry.end(status="failed", finish_reason="error", usage=None, error="worker lost"),
        StreamEntry.requeue(),
        StreamEntry.start(2),
        token("b", [2]),
        succeeded(),
    )
    assert shape(await followed(job_id)) == [
        ("queued", ""),
        ("start", ""),
        ("tok", "a"),
        ("requeue", ""),
        ("start", ""),
        ("tok", "b"),
        ("end", "succeeded"),
    ]


async def test_flagging_an_abandoned_job_and_cancelling_an_ended_one(job_id: str) -> None:
    await job_client.abandon(job_id)
    client = get_redis()
    assert client.get(cancel_key(job_id)) == b"1"
    assert 0 < client.ttl(cancel_key(job_id)) <= get_streams().open_ttl_s
    ended = Job(status=JobStatus.SUCCEEDED)
    assert job_client.cancel(ended) is ended  # nothing to stop: no query, no flag
    assert not client.exists(cancel_key(str(ended.id)))


@pytest.fixture
def owner(transactional_db: None) -> User:
    # Committed: the client reads rows on its own threads (`db`), outside any test transaction.
    return User.objects.create(username=f"client-{uuid.uuid4().hex[:8]}")


def ended_job(owner: User, *, text: str, finished_ago_s: float = 0.0) -> Job:
    return Job.objects.create(
        user=owner,
        model=TEST_MODEL_NAME,
        kind="completion",
        input={"prompt": "x"},
        status=JobStatus.SUCCEEDED,
        output_text=text,
        finish_reason="length",
        prompt_tokens=3,
        completion_tokens=2,
        cache_hit=True,
        finished_at=timezone.now() - timedelta(seconds=finished_ago_s),
    )


@pytest.fixture
def expired(owner: User) -> Job:
    return ended_job(owner, text="Hi there")


async def test_a_finished_job_whose_stream_expired_is_one_end_entry_from_its_row(expired: Job) -> None:
    [end] = await followed(str(expired.id))
    assert end is not None and (end.id, end.kind, end.status) == ("0-0", "end", "succeeded")
    assert (end.finish_reason, end.full_text, end.cache_hit) == ("length", "Hi there", True)
    assert end.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.fixture
def lost_end(owner: User) -> Iterator[Job]:
    """A job that ended a while ago (its row says "Hello") whose stream lost its last writes."""
    job = ended_job(owner, text="Hello", finished_ago_s=60)
    get_streams().open(str(job.id))
    write(str(job.id), StreamEntry.start(1), token("Hel", [5]))
    yield job
    get_redis().delete(stream_key(str(job.id)))


async def test_a_stream_that_lost_its_end_is_completed_from_the_row(lost_end: Job) -> None:
    entries = [e for e in await followed(str(lost_end.id), keepalive_s=0.02) if e is not None]
    assert shape(entries) == [
        ("queued", ""),
        ("start", ""),
        ("tok", "Hel"),
        ("tok", "lo"),
        ("end", "succeeded"),
    ]
    end = entries[-1]
    assert end.full_text is None  # the text came as a token: not twice
    assert end.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_waiting_for_the_end_returns_on_the_end_entry_and_else_on_a_final_row(owner: User) -> None:
    """``wait_end`` returns when the stream's end entry arrives (here the row still says
    running: only the entry can end the wait), and with no stream at all as soon as the row is
    final — both long before the timeout it was given (30 s)."""
    job = ended_job(owner, text="Hi")
    Job.objects.filter(id=job.id).update(status=JobStatus.RUNNING)
    get_streams().open(str(job.id))
    write(str(job.id), token("Hi", [9]), succeeded())
    started = time.monotonic()
    try:
        waited = job_client.wait_end(job.id, timeout_s=30)
    finally:
        get_redis().delete(stream_key(str(job.id)))
    assert (waited.pk, waited.status) == (job.pk, JobStatus.RUNNING)
    assert time.monotonic() - started < 25  # the end entry ended it, not the timeout
    # No stream at all (it expired, or the job was cancelled before it ran): the row decides.
    started = time.monotonic()
    assert job_client.wait_end(ended_job(owner, text="").id, timeout_s=30).status == JobStatus.SUCCEEDED
    assert time.monotonic() - started < 25
