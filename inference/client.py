"""The job client: the gateway's only door into jobs (the role vLLM's ``EngineClient`` plays
between its OpenAI server and its engine).

- `submit`: persist a job and queue it (`inference.services.job_create`).
- `follow`: a job's stream entries after a cursor, as an async iterator, ending with its end
  entry (resumable: the cursor is an entry id). A job whose stream has expired yields one end
  entry built from its row.
- `entries`: every entry written so far (non-streaming answers that need token details).
- `wait_end`: block until a job has ended; the row is final then.
- `cancel` (a client asked) and `abandon` (a streaming client went away): stop the job.

Nothing outside `inference` reads Redis keys of jobs or the stream's fields: the format is
`inference.jobstream.StreamEntry`. No database connection is held while waiting: every
query takes a connection from the pool and gives it back (`db`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job
from inference.store import async_redis, get_redis, get_streams
from inference.streams import cancel_key, stream_key

logger = logging.getLogger(__name__)

T = TypeVar("T")


def release_connection() -> None:
    """Give this thread's database connection back to the pool (before any wait)."""
    connection.close()


def _closing(fn: Callable[..., T]) -> Callable[..., T]:
    def run(*args: Any, **kwargs: Any) -> T:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return run


async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an ORM call from async code on a worker thread and return its connection to the
    pool at once: async code must never keep one across an await."""
    return await sync_to_async(_closing(fn), thread_sensitive=False)(*args, **kwargs)


def _valid_cursor(value: str) -> bool:
    millis, sep, seq = value.partition("-")
    # Redis stream ids are two unsigned 64-bit integers.
    return bool(sep) and millis.isdigit() and seq.isdigit() and int(millis) < 2**64 and int(seq) < 2**64


def valid_cursor(value: str) -> bool:
    """Whether ``value`` can be a stream entry id (``Last-Event-ID``)."""
    return _valid_cursor(value)


def _end_from_row(job: Job) -> StreamEntry:
    return StreamEntry.end(
        id="0-0",
        status=job.status,
        finish_reason=job.finish_reason,
        usage=job.usage,
        error=job.error,
        cache_hit=job.cache_hit,
        full_text=job.output_text,
    )


def _reraise_swallowed_cancel() -> None:
    """redis-py's asyncio client sometimes swallows a CancelledError thrown into a blocking
    XREAD (seen here in about 1 of 6 client disconnects): the call returns as if it timed out
    and the stream would go on for a client that is gone. The task still records that it was
    asked to cancel (``Task.cancelling()``), so honour that."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _job_row(job_id: str) -> Job | None:
    return Job.objects.filter(id=job_id).first()


class JobClient:
    """Stateless; one per process is enough (`job_client`)."""

    # -- submit / cancel ------------------------------------------------------------------------

    def submit(self, **kwargs: Any) -> Job:
        from inference.services import job_create

        return job_create(**kwargs)

    def cancel(self, job: Job) -> Job:
        """Cancel: at once if it has not started, else at the engine's next step."""
        from inference.services import job_cancel

        if job.is_terminal:
            return job
        return job_cancel(job=job)

    async def abandon(self, job_id: str) -> None:
        """The client of a streaming request went away: stop generating for it."""
        try:
            await async_redis().set(cancel_key(job_id), "1", ex=get_streams().open_ttl_s)
        except Exception:
            logger.warning("could not flag job %s as cancelled", job_id, exc_info=True)

    # -- read ------------------------------------------------------------------------------------

    def entries(self, job_id: str) -> list[StreamEntry]:
        raw: Any = get_redis().xrange(stream_key(job_id))
        return [StreamEntry.decode(entry_id, fields) for entry_id, fields in raw]

    async def follow(
        self, job_id: str, *, after: str = "0-0", keepalive_s: float | None = None
    ) -> AsyncIterator[StreamEntry | None]:
        """Entries after ``after``, ending with the end entry. ``None`` is a keepalive tick
        (nothing happened for ``keepalive_s``, by default SLUICE_SSE_KEEPALIVE_S)."""
        client = async_redis()
        key = stream_key(job_id)
        if keepalive_s is None:
            keepalive_s = float(settings.SLUICE_SSE_KEEPALIVE_S)
        block_ms = max(1, int(keepalive_s * 1000))
        newest: Any = await client.xrevrange(key, count=1)
        if not newest:
            job = await db(_job_row, job_id)
            if job is not None and job.is_terminal:
                yield _end_from_row(job)
                return
        else:
            raw_id, raw = newest[0]
            last = StreamEntry.decode(raw_id, raw)
            if last.id == after and last.kind == EntryKind.END:
                return  # the client has already seen the end
        while True:
            response: Any = await client.xread({key: after}, count=512, block=block_ms)
            _reraise_swallowed_cancel()
            if not response:
                job = await db(_job_row, job_id)
                if job is not None and job.is_terminal and not await client.exists(key):
                    yield _end_from_row(job)
                    return
                yield None
                continue
            for raw_id, raw in response[0][1]:
                entry = StreamEntry.decode(raw_id, raw)
                after = entry.id
                yield entry
                if entry.kind == EntryKind.END:
                    return

    def wait_end(self, job_id: str | uuid.UUID, *, timeout_s: float) -> Job:
        """Block until the job's stream has its end entry (the row is final by then). Holds
        no database connection while it waits."""
        release_connection()
        client = get_redis()
        key = stream_key(str(job_id))
        last = "0-0"
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            block_ms = max(1, int(min(remaining, 5.0) * 1000))
            response: Any = client.xread({key: last}, count=1000, block=block_ms)
            if not response:
                job = _closing(Job.objects.get)(id=job_id)
                if job.is_terminal:  # stream expired or was never written (cancelled early)
                    return job
                continue
            for entry_id, raw in response[0][1]:
                entry = StreamEntry.decode(entry_id, raw)
                last = entry.id
                if entry.kind == EntryKind.END:
                    return _closing(Job.objects.get)(id=job_id)
        return _closing(Job.objects.get)(id=job_id)


job_client = JobClient()
