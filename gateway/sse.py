"""Server-sent events for every streaming protocol: the wire encoding, the response, the
renderer that lets ``Accept: text/event-stream`` through, cancelling a job whose client went
away, and the client-side latencies (TTFT, inter-token, end to end).

Streams are async generators: under ASGI a sync iterator would be buffered whole (DESIGN.md §2).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from inference.client import job_client
from inference.core.db import release_connection
from inference.models import Job
from inference.observability.recording import record_latency
from inference.versions.registry import version_label

KEEPALIVE = b": keepalive\n\n"


def sse(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    lines.append(f"data: {payload}")
    return ("\n".join(lines) + "\n\n").encode()


def sse_comment(name: str, data: dict[str, Any]) -> bytes:
    """A comment line: every SSE client (the openai SDK, huggingface_hub, EventSource) skips
    it, curl shows it. Used for queue position/ETA on OpenAI and TGI streams, whose clients
    would take a named event for a chunk."""
    return f": {name} {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStreamRenderer(BaseRenderer):
    """Lets content negotiation accept ``Accept: text/event-stream`` (every browser
    ``EventSource`` sends it) on the streaming routes; DRF would answer 406 otherwise. It
    never renders a body: streams are StreamingHttpResponses, and errors are switched back to
    JSON by the base view."""

    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return json.dumps(data).encode()


def sse_response(stream: AsyncIterator[bytes], *, status: int = 200) -> StreamingHttpResponse:
    # Django gives a request's database connection back only when the response is closed,
    # i.e. at the end of the stream (and never, if the stream raises: its ASGI handler skips
    # close()): a stream of minutes must not hold a pooled connection. Called from the view's
    # thread, so this is the connection the view used.
    release_connection()
    response = StreamingHttpResponse(stream, content_type="text/event-stream", status=status)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


def version_of(job: Job) -> str:
    """The label of the version that serves a job (no query: called on the event loop)."""
    return version_label(job.model_version_id)


class Timing:
    """TTFT, inter-token latency and e2e latency as the client sees them, per model version."""

    def __init__(self, job: Job, started: float) -> None:
        self.model = job.model
        self.version = version_of(job)
        self.started = started
        self.last: float | None = None

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            record_latency("ttft", model=self.model, version=self.version, seconds=now - self.started)
        else:
            record_latency("itl", model=self.model, version=self.version, seconds=now - self.last)
        self.last = now

    def done(self) -> None:
        record_latency(
            "e2e", model=self.model, version=self.version, seconds=time.perf_counter() - self.started
        )


def observe_completed(job: Job, *, started: float) -> None:
    """Latencies of a non-streaming request (``started``: time.perf_counter() at arrival)."""
    elapsed = time.perf_counter() - started
    version = version_of(job)
    record_latency("e2e", model=job.model, version=version, seconds=elapsed)
    if job.first_token_at is not None and job.finished_at is not None:
        before_end = (job.finished_at - job.first_token_at).total_seconds()
        record_latency("ttft", model=job.model, version=version, seconds=max(0.0, elapsed - before_end))


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def cancel_on_disconnect(job_ids: list[str], events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Stream ``events``; if the response ends before they do (the client went away), cancel
    the jobs.

    Django cancels the task that sends the response when the client disconnects. If that
    happens while the task is inside ``send()``, this generator is left suspended at a
    ``yield`` and only closed whenever the garbage collector gets to it, so its ``finally``
    cannot be relied on: a done-callback on the sending task reacts at once.
    """
    finished = False
    flagged = False

    def cancel_once() -> None:
        nonlocal flagged
        if not finished and not flagged:
            flagged = True
            for job_id in job_ids:
                _spawn(job_client.abandon(job_id))

    sender = asyncio.current_task()
    if sender is not None:
        sender.add_done_callback(lambda _: cancel_once())
    try:
        async for chunk in events:
            yield chunk
        finished = True
    finally:
        cancel_once()
