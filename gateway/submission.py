"""One submit path for every protocol: admit → create → stream or wait (DESIGN.md §1 steps 3, 4, 9).

A protocol package parses its request, prepares it (`gateway.prepare`) and hands the
`PreparedRequest` to a `Submission`, which

- admits it (rate-limit policy, fair waiting room): at once, or after a wait — blocking in a
  sync view (`run`, `accept`), as SSE comments with the queue position on a stream
  (`stream`), or as events for a WebSocket (`events`);
- creates the job through the job client (the row, its stream, the Celery message);
- answers: the protocol's stream of the job, or the finished job for a JSON body.

No database connection is held while a submission waits for admission or for the job: the
view's connection goes back to the pool before every wait, and async code takes one only
for each query (`inference.client.db`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth.models import User
from django.http import StreamingHttpResponse
from rest_framework import status
from rest_framework.request import Request

from gateway.admission import Admission, admit, queue_event
from gateway.auth import request_api_key, request_user
from gateway.errors import ApiError
from gateway.idempotency import IdempotencyClaim
from gateway.models import ApiKey
from gateway.prepare import PreparedRequest
from gateway.sse import sse_comment, sse_response
from inference.admission.services import admission_release
from inference.client import job_client
from inference.core.db import db, release_connection
from inference.models import Job, JobStatus
from inference.versions.registry import VersionGone

logger = logging.getLogger(__name__)

StreamFor = Callable[[Job], AsyncIterator[bytes]]
Refused = Callable[[ApiError], list[bytes]]


@dataclass(frozen=True)
class Caller:
    """Who submits: the authenticated user, the key they used, the request's id."""

    user: User
    api_key: ApiKey | None = None
    request_id: str = ""

    @classmethod
    def of(cls, request: Request) -> Caller:
        return cls(
            user=request_user(request),
            api_key=request_api_key(request),
            request_id=str(getattr(request, "request_id", "") or ""),
        )


@dataclass
class Submission:
    caller: Caller
    prepared: PreparedRequest
    source: str
    started: float = field(default_factory=time.perf_counter)
    received_at: float = field(default_factory=time.time)
    admission: Admission | None = None
    #: The request's Idempotency-Key claim (shared by the submissions of one batch), and
    #: which of its jobs this submission is.
    idempotency: IdempotencyClaim | None = None
    index: int = 0

    @property
    def replay(self) -> bool:
        """The same Idempotency-Key and body were seen before: answer with that job."""
        return self.idempotency is not None and self.idempotency.replay

    def _failed(self) -> None:
        if self.idempotency is not None:
            self.idempotency.abandon()

    # -- admission -------------------------------------------------------------------------

    def admit(self) -> Admission | None:
        """The first attempt: admitted or waiting; raises the 429/503 refusal. The admission
        carries the ``x-ratelimit-*`` headers of the response (``with_ratelimit``). A replay
        is not admitted again (its job was)."""
        if self.replay:
            return None
        try:
            self.admission = admit(
                user=self.caller.user,
                api_key=self.caller.api_key,
                model=self.prepared.model,
                cost=self.prepared.cost,
            )
        except BaseException:
            self._failed()
            raise
        return self.admission

    async def admit_async(self) -> Admission | None:
        return await db(self.admit)

    def _admission(self) -> Admission:
        if self.admission is None:
            raise RuntimeError("submit before admit")
        return self.admission

    def wait_admitted(self) -> None:
        """Block until admitted (sync views); raise the refusal. Holds no connection."""
        if self.replay:
            return
        admission = self._admission()
        if not admission.admitted:
            release_connection()
            try:
                admission.wait()
            except BaseException:
                self._failed()
                raise

    async def events(self) -> AsyncIterator[dict[str, object]]:
        """While waiting: one queue event (position, ETA) per change; raises the refusal."""
        async for decision in self._admission().events():
            yield queue_event(decision)

    def abandon(self) -> None:
        """Give the place (and the reservation) back: the job will not be created."""
        if self.admission is not None and self.admission.admitted:
            admission_release(grant=self.admission.grant, used_tokens=0)
        elif self.admission is not None:
            self.admission.abandon()

    # -- the job ----------------------------------------------------------------------------

    def create(self, *, settle: bool = True) -> Job:
        """The job: created now, or the one an earlier request with the same Idempotency-Key
        created. ``settle``: record it under the key (a batch records all its jobs at once)."""
        if self.replay:
            assert self.idempotency is not None
            return Job.objects.get(id=self.idempotency.job_ids[self.index], user=self.caller.user)
        try:
            job = self._create()
        except VersionGone as exc:
            self._failed()
            raise ApiError(
                f"The model '{exc}' does not exist or you do not have access to it.",
                status_code=status.HTTP_404_NOT_FOUND,
                code="model_not_found",
                param="model",
            ) from None
        except BaseException:
            self._failed()
            raise
        if settle and self.idempotency is not None:
            self.idempotency.complete([str(job.id)])
        return job

    def _create(self) -> Job:
        admission = self._admission()
        prepared = self.prepared
        return job_client.submit(
            user=self.caller.user,
            api_key_id=self.caller.api_key.pk if self.caller.api_key is not None else None,
            model=prepared.model,
            kind=prepared.kind,
            input=prepared.input,
            params=prepared.params,
            source=self.source,
            prompt_tokens=prepared.prompt_tokens,
            priority=admission.tier,
            admission=admission.grant,
            session_id=prepared.session_id,
            request_id=self.caller.request_id,
            extra=prepared.extra,
            timeline={
                "received_at": self.received_at,
                "admitted_at": admission.admitted_at,
                "admission_wait_ms": round(admission.wait_s * 1000),
                "admission_waited_for": admission.waited_for,
            },
        )

    async def create_async(self) -> Job:
        return await db(self.create)

    def accept(self) -> Job:
        """Admitted (waiting if it must), then created: the native jobs API's 202."""
        self.wait_admitted()
        return self.create()

    def run(self) -> Job:
        """Admitted, created and finished: the job for a JSON body (raises if it failed)."""
        return self.finish(self.accept())

    def finish(self, job: Job) -> Job:
        """Wait for a created job to end; raise if it failed."""
        job = job_client.wait_end(job.id, timeout_s=settings.SLUICE_JOB_TIMEOUT_S + 5)
        raise_for_failed(job)
        return job

    def stream(self, stream_for: StreamFor, *, refused: Refused) -> StreamingHttpResponse:
        """The streaming answer: the job's stream at once if admitted, else queue comments
        while it waits, then the stream (or the refusal, as the protocol's error event)."""
        if self.replay or self._admission().admitted:
            return sse_response(stream_for(self.create()))
        return sse_response(self._wait_then_stream(stream_for, refused))

    async def _wait_then_stream(self, stream_for: StreamFor, refused: Refused) -> AsyncIterator[bytes]:
        created = False
        try:
            try:
                async for event in self.events():
                    yield sse_comment("queue", event)
            except ApiError as exc:
                for chunk in refused(exc):
                    yield chunk
                return
            job = await self.create_async()
            created = True
            async for chunk in stream_for(job):
                yield chunk
        finally:
            if not created and self.idempotency is not None and not self.idempotency.settled:
                # Refused, or the client left while waiting: the key is free again.
                await asyncio.shield(db(self._failed))


def submit_all(submissions: list[Submission]) -> list[Job]:
    """The jobs of one request that asks for several (a batch of prompts): every one admitted
    (waiting if it must), then every one created. A refusal gives back the admissions granted
    before it, so a batch is all or nothing."""
    if submissions and submissions[0].replay:
        return [submission.create() for submission in submissions]
    admitted: list[Submission] = []
    try:
        for submission in submissions:
            submission.admit()
            submission.wait_admitted()
            admitted.append(submission)
    except BaseException:
        for submission in admitted:
            submission.abandon()
        raise
    jobs: list[Job] = []
    try:
        for submission in submissions:
            jobs.append(submission.create(settle=False))
    except BaseException:
        for job in jobs:
            job_client.cancel(job)
        for submission in submissions[len(jobs) + 1 :]:
            submission.abandon()
        raise
    claim = submissions[0].idempotency if submissions else None
    if claim is not None:
        claim.complete([str(job.id) for job in jobs])
    return jobs


def raise_for_failed(job: Job) -> None:
    """A non-streaming request whose job failed gets an error, not an empty answer."""
    if job.status == JobStatus.FAILED:
        if job.finish_reason == "deadline":
            raise ApiError(
                "The request did not finish within the server's time limit.",
                status_code=status.HTTP_504_GATEWAY_TIMEOUT,
                code="timeout",
            )
        raise ApiError(
            f"The model failed to generate a response: {job.error or 'unknown error'}",
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            code="generation_failed",
        )
    if not job.is_terminal:
        raise ApiError(
            "The request did not finish in time; it keeps running as job " + str(job.id),
            status_code=status.HTTP_504_GATEWAY_TIMEOUT,
            code="timeout",
        )
