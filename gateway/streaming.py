"""Server-sent events from a job's Redis Stream, as async generators (under ASGI a sync
iterator would be buffered whole, DESIGN.md §2).

Each API shapes the same entries its own way: OpenAI chunks ending in ``data: [DONE]``, TGI
token events, or native events whose ``id:`` is the stream entry id (``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import StreamingHttpResponse

from gateway.admission import Admission, queue_event
from gateway.errors import ApiError, envelope
from gateway.protocol import openai_finish_reason, tgi_finish_reason
from inference.metrics import E2E_LATENCY, INTER_TOKEN_LATENCY, TIME_TO_FIRST_TOKEN
from inference.models import Job
from inference.store import async_redis, get_streams
from inference.streams import cancel_key, decode_fields, stream_key

logger = logging.getLogger(__name__)


@dataclass
class Entry:
    id: str
    fields: dict[str, str]

    @property
    def kind(self) -> str:
        return self.fields.get("t", "")

    @property
    def text(self) -> str:
        return self.fields.get("x", "")

    @property
    def token_ids(self) -> list[int]:
        raw = self.fields.get("i", "")
        return [int(i) for i in raw.split(",")] if raw else []

    @property
    def logprobs(self) -> list[float]:
        raw = self.fields.get("lp", "")
        return [float(x) for x in raw.split(",")] if raw else []

    @property
    def usage(self) -> dict[str, int] | None:
        raw = self.fields.get("u", "")
        return json.loads(raw) if raw else None

    @property
    def citations(self) -> list[dict[str, Any]]:
        raw = self.fields.get("c", "")
        return json.loads(raw) if raw else []

    @property
    def cache_hit(self) -> bool:
        return self.fields.get("ch") == "1"


def _end_from_job(job: Job) -> Entry:
    return Entry(
        id="0-0",
        fields={
            "t": "end",
            "s": job.status,
            "f": job.finish_reason,
            "u": json.dumps(job.usage) if job.usage else "",
            "e": job.error,
            "x_full": job.output_text,
            **({"ch": "1"} if job.cache_hit else {}),
        },
    )


def _reraise_swallowed_cancel() -> None:
    """redis-py's asyncio client sometimes swallows a CancelledError thrown into a blocking
    XREAD (seen here in about 1 of 6 client disconnects): the call returns as if it timed out
    and the stream would go on for a client that is gone. The task still records that it was
    asked to cancel (``Task.cancelling()``), so honour that."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def iter_entries(job_id: str, *, after: str = "0-0") -> AsyncIterator[Entry | None]:
    """Stream entries after ``after``, ending with the ``end`` entry. ``None`` is a keepalive
    tick (nothing happened for a while). A job whose stream has expired yields a synthetic
    end entry built from its row (with the whole text in ``x_full``)."""
    client = async_redis()
    key = stream_key(job_id)
    block_ms = int(settings.SLUICE_SSE_KEEPALIVE_S * 1000)
    newest: Any = await client.xrevrange(key, count=1)
    if not newest:
        job = await sync_to_async(Job.objects.filter(id=job_id).first)()
        if job is not None and job.is_terminal:
            yield _end_from_job(job)
            return
    else:
        raw_id, raw = newest[0]
        newest_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        if newest_id == after and decode_fields(raw).get("t") == "end":
            return  # the client has already seen the end
    while True:
        response: Any = await client.xread({key: after}, count=512, block=block_ms)
        _reraise_swallowed_cancel()
        if not response:
            job = await sync_to_async(Job.objects.filter(id=job_id).first)()
            if job is not None and job.is_terminal and not await client.exists(key):
                yield _end_from_job(job)
                return
            yield None
            continue
        for raw_id, raw in response[0][1]:
            after = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            entry = Entry(after, decode_fields(raw))
            yield entry
            if entry.kind == "end":
                return


def sse(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    lines.append(f"data: {payload}")
    return ("\n".join(lines) + "\n\n").encode()


KEEPALIVE = b": keepalive\n\n"


def sse_comment(name: str, data: dict[str, Any]) -> bytes:
    """A comment line: every SSE client (the openai SDK, huggingface_hub, EventSource) skips
    it, curl shows it. Used for queue position/ETA on OpenAI and TGI streams, whose clients
    would take a named event for a chunk."""
    return f": {name} {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error_body(exc: ApiError) -> dict[str, Any]:
    return envelope(exc.message, status_code=exc.status_code, code=exc.error_code, param=exc.param)


def openai_refused(exc: ApiError) -> list[bytes]:
    """A streaming request refused after waiting: the status line has gone out (200), so the
    429/503 travels as an error chunk, which the openai SDK raises as an APIError."""
    body = _error_body(exc)
    body["error"]["retry_after_s"] = int(exc.extra_headers.get("Retry-After", "1"))
    return [sse(body), sse("[DONE]")]


def tgi_refused(exc: ApiError) -> list[bytes]:
    return [sse({"error": exc.message, "error_type": exc.error_code or "rate_limit"})]


def admitted_stream(
    admission: Admission,
    *,
    create: Callable[[], Job],
    stream: Callable[[Job], AsyncIterator[bytes]],
    refused: Callable[[ApiError], list[bytes]],
) -> AsyncIterator[bytes]:
    """A streaming request that must wait: queue position/ETA comments while it waits, then
    the job's own stream once admitted, or the refusal."""

    def create_and_release_connection() -> Job:
        try:
            return create()
        finally:
            connection.close()

    async def events() -> AsyncIterator[bytes]:
        try:
            async for decision in admission.events():
                yield sse_comment("queue", queue_event(decision))
        except ApiError as exc:
            for chunk in refused(exc):
                yield chunk
            return
        job = await sync_to_async(create_and_release_connection, thread_sensitive=False)()
        async for chunk in stream(job):
            yield chunk

    return events()


def sse_response(stream: AsyncIterator[bytes], *, status: int = 200) -> StreamingHttpResponse:
    # Django gives a request's database connection back only when the response is closed,
    # i.e. at the end of the stream; a stream of minutes must not hold a pooled connection
    # (with 16 in the pool, the 17th concurrent stream would wait for one). Called from the
    # view's thread, so this is the connection the view used.
    connection.close()
    response = StreamingHttpResponse(stream, content_type="text/event-stream", status=status)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


class _Timing:
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


def observe_completed(job: Job, *, started: float) -> None:
    """Latencies of a non-streaming request (``started``: time.perf_counter() at arrival)."""
    elapsed = time.perf_counter() - started
    E2E_LATENCY.labels(job.model).observe(elapsed)
    if job.first_token_at is not None and job.finished_at is not None:
        # The row's timestamps are wall clock; anchor them at the response time.
        first_token_ago = (job.finished_at - job.first_token_at).total_seconds()
        TIME_TO_FIRST_TOKEN.labels(job.model).observe(max(0.0, elapsed - first_token_ago))


async def _cancel_job(job_id: str) -> None:
    """The client of a streaming request went away: stop generating for it."""
    try:
        await async_redis().set(cancel_key(job_id), "1", ex=get_streams().open_ttl_s)
    except Exception:
        logger.warning("could not flag job %s as cancelled", job_id, exc_info=True)


_background: set[asyncio.Task[None]] = set()


async def _cancel_on_disconnect(job_id: str, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Stream ``events``; if the response ends before they do (the client went away), cancel.

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
            task = asyncio.ensure_future(_cancel_job(job_id))
            _background.add(task)
            task.add_done_callback(_background.discard)

    sender = asyncio.current_task()
    if sender is not None:
        sender.add_done_callback(lambda _: cancel_once())
    try:
        async for chunk in events:
            yield chunk
        finished = True
    finally:
        cancel_once()


def _error_chunk(entry: Entry) -> dict[str, Any]:
    message = entry.fields.get("e") or "generation failed"
    return envelope(message, status_code=500, code=entry.fields.get("f") or "generation_failed")


def openai_chat_stream(
    *, job_id: str, response_id: str, model: str, created: int, include_usage: bool, started: float
) -> AsyncIterator[bytes]:
    timing = _Timing(model, started)

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return sse(
            {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                **extra,
            }
        )

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        async for entry in iter_entries(job_id):
            if entry is None:
                yield KEEPALIVE
            elif entry.kind == "cite":
                # Sources before the tokens, as an extra field (as Perplexity's API does).
                yield chunk({}, citations=entry.citations)
            elif entry.kind == "tok" and entry.text:
                timing.token()
                yield chunk({"content": entry.text})
            elif entry.kind == "end":
                if entry.fields.get("x_full"):
                    yield chunk({"content": entry.fields["x_full"]})
                if entry.fields.get("s") == "failed":
                    yield sse(_error_chunk(entry))
                else:
                    yield chunk(
                        {}, openai_finish_reason(entry.fields.get("f", "")), cache_hit=entry.cache_hit
                    )
                    if include_usage:
                        yield sse(
                            {
                                "id": response_id,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": model,
                                "system_fingerprint": None,
                                "choices": [],
                                "usage": entry.usage,
                            }
                        )
        timing.done()
        yield sse("[DONE]")

    return _cancel_on_disconnect(job_id, events())


def openai_completion_stream(
    *, job_id: str, response_id: str, model: str, created: int, include_usage: bool, started: float
) -> AsyncIterator[bytes]:
    timing = _Timing(model, started)

    def chunk(text: str, finish_reason: str | None = None, **extra: Any) -> bytes:
        return sse(
            {
                "id": response_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
                **extra,
            }
        )

    async def events() -> AsyncIterator[bytes]:
        async for entry in iter_entries(job_id):
            if entry is None:
                yield KEEPALIVE
            elif entry.kind == "tok" and entry.text:
                timing.token()
                yield chunk(entry.text)
            elif entry.kind == "end":
                if entry.fields.get("x_full"):
                    yield chunk(entry.fields["x_full"])
                if entry.fields.get("s") == "failed":
                    yield sse(_error_chunk(entry))
                else:
                    yield chunk(
                        "", openai_finish_reason(entry.fields.get("f", "")), cache_hit=entry.cache_hit
                    )
                    if include_usage:
                        yield sse(
                            {
                                "id": response_id,
                                "object": "text_completion",
                                "created": created,
                                "model": model,
                                "choices": [],
                                "usage": entry.usage,
                            }
                        )
        timing.done()
        yield sse("[DONE]")

    return _cancel_on_disconnect(job_id, events())


def tgi_stream(
    *,
    job_id: str,
    model: str,
    seed: int | None,
    eos_ids: frozenset[int],
    prefix: str,
    started: float,
    decode: Callable[[list[int]], str],
) -> AsyncIterator[bytes]:
    """TGI's /generate_stream: one event per token; the last carries generated_text/details."""
    timing = _Timing(model, started)

    async def events() -> AsyncIterator[bytes]:
        index = 0
        text = prefix
        pending: list[tuple[int, str, float]] = []
        async for entry in iter_entries(job_id):
            if entry is None:
                yield KEEPALIVE
                continue
            if entry.kind == "tok":
                ids, logprobs = entry.token_ids, entry.logprobs
                for position, token_id in enumerate(ids):
                    # The entry's text belongs to its last token (a step may hold back text).
                    token_text = entry.text if position == len(ids) - 1 else ""
                    logprob = logprobs[position] if position < len(logprobs) else 0.0
                    pending.append((token_id, token_text, logprob))
                # Hold the newest token back: if it is the last one, its event must carry
                # generated_text and details.
                while len(pending) > 1:
                    token_id, token_text, logprob = pending.pop(0)
                    index += 1
                    text += token_text
                    timing.token()
                    yield sse(_tgi_event(index, token_id, token_text, logprob, token_id in eos_ids))
            elif entry.kind == "end":
                if entry.fields.get("s") == "failed":
                    message = entry.fields.get("e") or "generation failed"
                    yield sse({"error": message, "error_type": "generation"})
                    break
                if entry.fields.get("x_full"):
                    pending.append((0, entry.fields["x_full"], 0.0))
                usage = entry.usage or {}
                details = {
                    "finish_reason": tgi_finish_reason(entry.fields.get("f", "")),
                    "generated_tokens": usage.get("completion_tokens", index + len(pending)),
                    "seed": seed,
                }
                if not pending:
                    pending.append((0, "", 0.0))
                for position, (token_id, token_text, logprob) in enumerate(pending):
                    index += 1
                    text += token_text
                    timing.token()
                    last = position == len(pending) - 1
                    event = _tgi_event(index, token_id, token_text, logprob, token_id in eos_ids)
                    if last:
                        event["generated_text"] = text
                        event["details"] = details
                    yield sse(event)
        timing.done()

    return _cancel_on_disconnect(job_id, events())


def _tgi_event(index: int, token_id: int, text: str, logprob: float, special: bool) -> dict[str, Any]:
    return {
        "index": index,
        "token": {"id": token_id, "text": text, "logprob": logprob, "special": special},
        "generated_text": None,
        "details": None,
    }


def native_job_stream(*, job_id: str, after: str) -> AsyncIterator[bytes]:
    """``/api/v1/jobs/{id}/events``: every entry, with its stream id as the SSE id, so that
    ``Last-Event-ID`` resumes exactly after the last event seen. Disconnecting does not
    cancel the job (that is what the cancel endpoint is for)."""

    async def events() -> AsyncIterator[bytes]:
        async for entry in iter_entries(job_id, after=after):
            if entry is None:
                yield KEEPALIVE
                continue
            if entry.kind == "tok":
                yield sse(
                    {
                        "text": entry.text,
                        "token_ids": entry.token_ids,
                        "completion_tokens": int(entry.fields.get("n", 0)),
                    },
                    event="token",
                    id=entry.id,
                )
            elif entry.kind == "end":
                data: dict[str, Any] = {
                    "status": entry.fields.get("s"),
                    "finish_reason": entry.fields.get("f") or None,
                    "usage": entry.usage,
                    "error": entry.fields.get("e") or None,
                    "cache_hit": entry.cache_hit,
                }
                if "x_full" in entry.fields:
                    data["text"] = entry.fields["x_full"]
                yield sse(data, event="end", id=entry.id if entry.id != "0-0" else None)
            elif entry.kind == "cite":
                yield sse({"citations": entry.citations}, event="citations", id=entry.id)
            elif entry.kind == "start":
                yield sse({"attempt": int(entry.fields.get("a", 1))}, event="started", id=entry.id)
            elif entry.kind == "queued":
                yield sse({}, event="queued", id=entry.id)

    return events()
