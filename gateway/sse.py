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

from inference.client import job_client, release_connection
from inference.metrics import E2E_LATENCY, INTER_TOKEN_LATENCY, TIME_TO_FIRST_TOKEN

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


class Timing:
    """TTFT, inter-token latency and e2e latency as the client sees them."""

    def __init__(self, model: str, started: float) -> None:
        self.model = model
        self.started = started
        self.last: float | None = None

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            TIME_TO_FIRST_TOKEN.labels(self.model).observe(now - self.started)
        else:
            INTER_TOKEN_LATENCY.labels(self.model).observe(now - self.last)
        self.last = now

    def done(self) -> None:
        E2E_LATENCY.labels(self.model).observe(time.perf_counter() - self.started)


def observe_completed(*, model: str, started: float, first_token_s_before_end: float | None) -> None:
    """Latencies of a non-streaming request (``started``: time.perf_counter() at arrival)."""
    elapsed = time.perf_counter() - started
    E2E_LATENCY.labels(model).observe(elapsed)
    if first_token_s_before_end is not None:
        TIME_TO_FIRST_TOKEN.labels(model).observe(max(0.0, elapsed - first_token_s_before_end))


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
