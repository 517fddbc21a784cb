"""The job client: the gateway's only door into jobs (the role vLLM's ``EngineClient`` plays
between its OpenAI server and its engine).

- `submit`: persist a job and queue it (`inference.jobs.create.job_create`).
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
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from inference.chat.selectors import response_history
from inference.core.db import closing, db, release_connection
from inference.core.redis import async_redis, get_redis
from inference.jobs.cancel import job_cancel, job_soft_delete
from inference.jobs.create import job_create
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job
from inference.sampling_params import SamplingParams
from inference.selectors import job_get_for_user, job_list_for_user, job_timings, response_get_for_user
from inference.store import get_streams
from inference.streams import cancel_key, stream_key
from inference.versions.registry import ServedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A finished job's end entry is written right after its row; this long after, it was lost.
END_GRACE_S = 3.0
#: How many quiet keepalive intervals a follower waits between looks at the job's row.
ROW_CHECK_EVERY = 5


def _valid_cursor(value: str) -> bool:
    millis, sep, seq = value.partition("-")
    # Redis stream ids are two unsigned 64-bit integers.
    return (
        bool(sep)
        and (millis + seq).isascii()  # "³" is a digit to str.isdigit() and not to int()
        and millis.isdigit()
        and seq.isdigit()
        and int(millis) < 2**64
        and int(seq) < 2**64
    )


def _position(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis or 0), int(seq or 0)


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

    def submit(
        self,
        *,
        user: User,
        api_key_id: int | None,
        model: ServedModel,
        kind: str,
        input: dict[str, Any],
        params: SamplingParams,
        source: str,
        prompt_tokens: int | None = None,
        priority: int = 0,
        admission: dict[str, Any] | None = None,
        session_id: uuid.UUID | str | None = None,
        request_id: str = "",
        extra: dict[str, Any] | None = None,
        timeline: dict[str, Any] | None = None,
    ) -> Job:
        """Create the job and queue it once its row is committed (``job_create`` says how)."""
        return job_create(
            user=user, api_key_id=api_key_id, model=model, kind=kind, input=input, params=params,
            source=source, prompt_tokens=prompt_tokens, priority=priority, admission=admission,
            session_id=session_id, request_id=request_id, extra=extra, timeline=timeline,
        )  # fmt: skip

    def cancel(self, job: Job) -> Job:
        """Cancel: at once if it has not started, else at the engine's next step."""
        if job.is_terminal:
            return job
        return job_cancel(job=job)

    def delete(self, job: Job) -> Job:
        """Cancel it if it still runs, then hide it from its owner (the Responses API's DELETE);
        the row stays for usage and audit."""
        job = self.cancel(job)
        job_soft_delete(job=job)
        return job

    async def abandon(self, job_id: str) -> None:
        """The client of a streaming request went away: stop generating for it."""
        try:
            await async_redis().set(cancel_key(job_id), "1", ex=get_streams().open_ttl_s)
        except Exception:
            logger.warning("could not flag job %s as cancelled", job_id, exc_info=True)

    # -- read ------------------------------------------------------------------------------------

    def get(self, *, user: User, job_id: str | uuid.UUID) -> Job | None:
        """The caller's job (None when it does not exist or is another user's: answer 404)."""
        return job_get_for_user(user=user, job_id=job_id)

    def list_of(self, *, user: User) -> QuerySet[Job]:
        """The caller's jobs, newest first."""
        return job_list_for_user(user=user)

    def get_response(self, *, user: User, job_id: str | uuid.UUID) -> Job | None:
        """The caller's stored, undeleted Responses job."""
        return response_get_for_user(user=user, job_id=job_id)

    def conversation(self, job_id: str | uuid.UUID) -> list[dict[str, Any]]:
        """The turns a Responses job and the ones it continued hold (``previous_response_id``)."""
        return response_history(job_id=job_id)

    def timings(self, job: Job) -> dict[str, Any]:
        """The job's timeline in milliseconds (``GET /api/v1/jobs/{id}``'s ``timings``)."""
        return job_timings(job)

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
            if last.kind == EntryKind.END and _position(after) >= _position(last.id):
                # The client has seen the end (or names a cursor past it: nothing will follow a
                # finished job's end, so waiting for it would wait for nothing).
                return
        outage_since: float | None = None
        quiet = 0
        while True:
            try:
                response: Any = await client.xread({key: after}, count=512, block=block_ms)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                # Redis is restarting: keep the cursor and the client (keepalives), try again.
                # The worker holds its tokens meanwhile; nothing is lost, nothing repeats.
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > settings.SLUICE_STORE_OUTAGE_S:
                    raise
                yield None
                await asyncio.sleep(min(2.0, 0.2 * 2 ** min(4, int(now - outage_since))))
                continue
            outage_since = None
            _reraise_swallowed_cancel()
            if not response:
                # Nothing new for a keepalive interval. Ask the database only when the stream
                # is gone (expired) or now and then (a lost end entry): a thousand idle
                # followers must not query it every few seconds.
                quiet += 1
                stream_gone = not await client.exists(key)
                if stream_gone or quiet % ROW_CHECK_EVERY == 0:
                    job = await db(_job_row, job_id)
                    if job is not None and job.is_terminal:
                        if stream_gone:
                            yield _end_from_row(job)
                            return
                        repair = await self._lost_end(client, key, job)
                        if repair:
                            for entry in repair:
                                yield entry
                            return
                yield None
                continue
            quiet = 0
            batch = [StreamEntry.decode(raw_id, raw) for raw_id, raw in response[0][1]]
            for index, entry in enumerate(batch):
                after = entry.id
                if entry.kind == EntryKind.END:
                    if index + 1 < len(batch) or await self._superseded(client, key, entry.id):
                        continue  # the job was requeued after it ended: not the end any more
                    yield entry
                    return
                yield entry

    @staticmethod
    async def _lost_end(client: Any, key: str, job: Job) -> list[StreamEntry]:
        """A job that ended a while ago but whose stream has no end entry (Redis lost its last
        writes, or was down when the job ended): the rest of its text from the row, then its
        end, so that a follower neither hangs nor misses text."""
        if job.finished_at is None or (timezone.now() - job.finished_at).total_seconds() < END_GRACE_S:
            return []
        raw: Any = await client.xrange(key)
        entries = [StreamEntry.decode(entry_id, fields) for entry_id, fields in raw]
        if entries and entries[-1].kind == EntryKind.END:
            return []  # it arrived meanwhile: the next read gets it
        streamed = "".join(e.text for e in entries if e.kind == EntryKind.TOKEN)
        repair = []
        if job.output_text.startswith(streamed) and len(job.output_text) > len(streamed):
            repair.append(
                StreamEntry.token(
                    text=job.output_text[len(streamed) :], token_ids=[], logprobs=[], completion_tokens=0
                )
            )
        end = _end_from_row(job)
        end.full_text = None
        repair.append(end)
        logger.warning("job %s ended but its stream has no end entry: completed it from the row", job.id)
        return repair

    @staticmethod
    async def _superseded(client: Any, key: str, end_id: str) -> bool:
        newest: Any = await client.xrevrange(key, count=1)
        return bool(newest) and StreamEntry.decode(*newest[0]).id != end_id

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
            try:
                response: Any = client.xread({key: last}, count=1000, block=block_ms)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.5)  # Redis is restarting; the job goes on meanwhile
                continue
            if not response:
                job = closing(Job.objects.get)(id=job_id)
                if job.is_terminal:  # stream expired or was never written (cancelled early)
                    return job
                continue
            for entry_id, raw in response[0][1]:
                entry = StreamEntry.decode(entry_id, raw)
                last = entry.id
                if entry.kind == EntryKind.END:
                    return closing(Job.objects.get)(id=job_id)
        return closing(Job.objects.get)(id=job_id)


job_client = JobClient()
