"""OpenAI streams: the SSE chunks of chat and completion requests, shaped from their jobs'
stream entries as they come (one walk for both, each protocol's hooks); the bodies of
non-streaming answers are in ``shaping.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError, envelope
from gateway.openai.shaping import (
    Shape,
    add_usage,
    chat_finish,
    created_ts,
    echo_prefix,
    fingerprint,
    finish_reason,
    join_logprobs,
    prompt_tokens_of,
    shaped_prompt_logprobs,
    shares_prompt,
    tool_call_id,
    usage_event,
)
from gateway.sse import KEEPALIVE, Timing, cancel_on_disconnect, sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job
from inference.tools.stream import CallStart, Content, Event, ToolCallStream


async def follow_all(jobs: Sequence[Job]) -> AsyncIterator[tuple[int, StreamEntry | None]]:
    """The entries of several jobs' streams as they come, each with its job's index (None
    entries: keepalive ticks). Ends when every stream has ended."""
    if len(jobs) == 1:
        async for entry in job_client.follow(str(jobs[0].id)):
            yield 0, entry
        return

    async def one(index: int, job: Job, out: asyncio.Queue[tuple[int, StreamEntry | None] | None]) -> None:
        try:
            async for entry in job_client.follow(str(job.id)):
                await out.put((index, entry))
        finally:
            await out.put(None)

    queue: asyncio.Queue[tuple[int, StreamEntry | None] | None] = asyncio.Queue()
    tasks = [asyncio.ensure_future(one(i, job, queue)) for i, job in enumerate(jobs)]
    running = len(jobs)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
                continue
            yield item
    finally:
        for task in tasks:
            task.cancel()


def _error_chunk(entry: StreamEntry) -> dict[str, Any]:
    return envelope(
        entry.error or "generation failed", status_code=500, code=entry.finish_reason or "generation_failed"
    )


def refused(exc: ApiError) -> list[bytes]:
    """A streaming request refused after waiting: the status line has gone out (200), so the
    429/503 travels as an error chunk, which the openai SDK raises as an APIError."""
    body = exc.body()
    body["error"]["retry_after_s"] = int(exc.extra_headers.get("Retry-After", "1"))
    return [sse(body), sse("[DONE]")]


class _Usage:
    """Usage over a request's jobs as their streams tell it (``continuous_usage_stats``: so far)."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = jobs
        self.prompt = [int(job.prompt_tokens or 0) for job in jobs]  # the gateway's count, until the worker's
        self.completion = [0] * len(jobs)
        self.final: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    def token(self, index: int, entry: StreamEntry) -> None:
        self.completion[index] = max(self.completion[index], entry.completion_tokens)

    def start(self, index: int, entry: StreamEntry) -> None:
        if entry.prompt_ids is not None:
            self.prompt[index] = len(entry.prompt_ids)

    def end(self, index: int, entry: StreamEntry) -> None:
        add_usage(self.final, entry.usage, shared_prompt=shares_prompt(self.jobs[index]))
        if entry.usage:
            self.prompt[index] = int(entry.usage.get("prompt_tokens", 0))
            self.completion[index] = int(entry.usage.get("completion_tokens", 0))

    def so_far(self) -> dict[str, int]:
        prompt = sum(p for p, job in zip(self.prompt, self.jobs, strict=True) if not shares_prompt(job))
        completion = sum(self.completion)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class _Chunks:
    """One stream's chunks: the request's fields around each choice, usage so far when asked."""

    response_id: str
    kind: str
    first: Job
    created: int
    fingerprint: str
    shape: Shape
    usage: _Usage

    #: Fields that ride in the choice, not at the top of the chunk (vLLM's places: a chat
    #: chunk has its prompt's ids at the top, a completion chunk in the choice).
    choice_fields: tuple[str, ...] = ("token_ids",)

    def sse(self, choice: dict[str, Any], extra: dict[str, Any]) -> bytes:
        for key in self.choice_fields:
            if key in extra:
                choice[key] = extra.pop(key)
        body = {
            "id": self.response_id,
            "object": self.kind,
            "created": self.created,
            "model": self.first.model,
            "system_fingerprint": self.fingerprint,
            "choices": [choice],
            **extra,
        }
        if self.shape.continuous_usage:
            body["usage"] = self.usage.so_far()
        return sse(body)


class _Hooks:
    """What one protocol's stream says at each step of its jobs' streams; ``_stream`` walks
    the entries (keepalives, usage, timing, errors, the usage chunk, ``[DONE]``) for both."""

    def opening(self) -> list[bytes]:
        return []

    def start(self, index: int, entry: StreamEntry) -> list[bytes]:
        return []

    def citations(self, index: int, entry: StreamEntry) -> list[bytes]:
        return []

    def token(self, index: int, entry: StreamEntry) -> list[bytes]:
        return []

    def tail(self, index: int, entry: StreamEntry) -> list[bytes]:
        """What is left to say when a job ends, before its finish (or error) chunk."""
        return []

    def finish(self, index: int, entry: StreamEntry) -> bytes:
        raise NotImplementedError


def _stream(jobs: Sequence[Job], *, chunks: _Chunks, hooks: _Hooks, started: float) -> AsyncIterator[bytes]:
    """One stream for a request's jobs (one per choice): a chunk's choice ``index`` names its
    job; chunks of different jobs interleave as they are generated."""
    timing = Timing(chunks.first, started)
    usage = chunks.usage

    async def events() -> AsyncIterator[bytes]:
        for part in hooks.opening():
            yield part
        async for index, entry in follow_all(jobs):
            parts: list[bytes] = []
            if entry is None:
                parts = [KEEPALIVE]
            elif entry.kind == EntryKind.START:
                usage.start(index, entry)
                parts = hooks.start(index, entry)
            elif entry.kind == EntryKind.CITATIONS:
                parts = hooks.citations(index, entry)
            elif entry.kind == EntryKind.TOKEN and (entry.text or entry.token_ids):
                usage.token(index, entry)
                timing.token()
                parts = hooks.token(index, entry)
            elif entry.kind == EntryKind.END:
                usage.end(index, entry)
                parts = hooks.tail(index, entry)
                parts.append(sse(_error_chunk(entry)) if entry.failed else hooks.finish(index, entry))
            for part in parts:
                yield part
        if chunks.shape.include_usage:
            yield usage_event(
                chunks.response_id,
                chunks.kind,
                created=chunks.created,
                model=chunks.first.model,
                fingerprint=chunks.fingerprint,
                usage=usage.final,
            )
        timing.done()
        yield sse("[DONE]")

    return cancel_on_disconnect([str(job.id) for job in jobs], events())


class _ChatHooks(_Hooks):
    def __init__(self, jobs: Sequence[Job], shape: Shape, chunks: _Chunks) -> None:
        self.jobs, self.shape, self.chunks = jobs, shape, chunks
        self.readers = [
            ToolCallStream(shape.tools, call_id=tool_call_id(job)) if shape.tools is not None else None
            for job in jobs
        ]

    def chunk(
        self, index: int, delta: dict[str, Any], reason: str | None = None, lp: Any = None, **extra: Any
    ) -> bytes:
        return self.chunks.sse(
            {"index": index, "delta": delta, "finish_reason": reason, "logprobs": lp}, extra
        )

    @staticmethod
    def delta(text: str | None, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        # Every delta names the role and has tool_calls (null when none): TGI's chat client
        # requires both on every chunk; the openai SDK takes them as they are.
        return {"role": "assistant", "content": text, "tool_calls": calls}

    def shaped(self, index: int, events: Sequence[Event], **extra: Any) -> list[bytes]:
        out = []
        for event in events:
            if isinstance(event, Content):
                out.append(self.chunk(index, self.delta(event.text), **extra))
            elif isinstance(event, CallStart):
                call = {
                    "index": event.index,
                    "id": event.id,
                    "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }
                out.append(self.chunk(index, self.delta(None, [call]), **extra))
            else:
                arguments = [{"index": event.index, "function": {"arguments": event.text}}]
                out.append(self.chunk(index, self.delta(None, arguments), **extra))
            extra = {key: value for key, value in extra.items() if key != "token_ids"}
        return out

    def opening(self) -> list[bytes]:
        return [self.chunk(index, self.delta("")) for index in range(len(self.jobs))]

    def start(self, index: int, entry: StreamEntry) -> list[bytes]:
        if self.shape.token_ids and entry.prompt_ids is not None and index == 0:
            return [self.chunk(index, self.delta(""), prompt_token_ids=entry.prompt_ids)]
        return []

    def citations(self, index: int, entry: StreamEntry) -> list[bytes]:
        # Sources before the tokens, as an extra field (as Perplexity's API does).
        return [self.chunk(index, self.delta(""), citations=entry.citations)]

    def token(self, index: int, entry: StreamEntry) -> list[bytes]:
        shape, reader = self.shape, self.readers[index]
        lp = shape.logprobs.chat([entry]) if shape.logprobs is not None else None
        extra: dict[str, Any] = {"token_ids": entry.token_ids} if shape.token_ids else {}
        if shape.prompt_logprobs is not None and entry.prompt_logprobs is not None:
            extra["prompt_logprobs"] = shaped_prompt_logprobs(shape, [entry])
        parts = (
            reader.feed(entry.text) if reader is not None else ([Content(entry.text)] if entry.text else [])
        )
        if parts and lp is None:
            return self.shaped(index, parts, **extra)
        if lp is not None or extra:
            # Log-probabilities (or ids) ride with the step's text, whatever it is.
            text = "".join(p.text for p in parts if isinstance(p, Content))
            others = [p for p in parts if not isinstance(p, Content)]
            return [self.chunk(index, self.delta(text), lp=lp, **extra), *self.shaped(index, others)]
        return []

    def tail(self, index: int, entry: StreamEntry) -> list[bytes]:
        reader = self.readers[index]
        tail: list[Event] = []
        if entry.full_text:
            tail += reader.feed(entry.full_text) if reader is not None else [Content(entry.full_text)]
        if reader is not None:
            tail += reader.finish()
        return self.shaped(index, tail)

    def finish(self, index: int, entry: StreamEntry) -> bytes:
        reader = self.readers[index]
        calls = bool(reader is not None and reader.calls)
        return self.chunk(
            index, self.delta(""), chat_finish(entry.finish_reason, calls), cache_hit=entry.cache_hit
        )


def chat_stream(jobs: Sequence[Job], *, shape: Shape, started: float) -> AsyncIterator[bytes]:
    """A chat request's stream: one job per choice."""
    first = jobs[0]
    chunks = _Chunks(
        f"chatcmpl-{first.id.hex}", "chat.completion.chunk", first, created_ts(first),
        fingerprint(shape.model), shape, _Usage(jobs),
    )  # fmt: skip
    return _stream(jobs, chunks=chunks, hooks=_ChatHooks(jobs, shape, chunks), started=started)


class _CompletionHooks(_Hooks):
    def __init__(self, jobs: Sequence[Job], shape: Shape, chunks: _Chunks) -> None:
        self.shape, self.chunks = shape, chunks
        self.prefixes = [echo_prefix(job, shape) for job in jobs]
        self.lengths = [len(prefix) for prefix in self.prefixes]  # the choice's text so far
        self.echoed = [not shape.echo for _ in jobs]

    def chunk(self, index: int, text: str, reason: str | None = None, lp: Any = None, **extra: Any) -> bytes:
        return self.chunks.sse({"index": index, "text": text, "finish_reason": reason, "logprobs": lp}, extra)

    def start(self, index: int, entry: StreamEntry) -> list[bytes]:
        if self.shape.token_ids and entry.prompt_ids is not None:
            return [self.chunk(index, "", prompt_token_ids=entry.prompt_ids)]
        return []

    def token(self, index: int, entry: StreamEntry) -> list[bytes]:
        shape, logprobs = self.shape, self.shape.logprobs
        text = entry.text
        lp = None
        if not self.echoed[index]:
            self.echoed[index] = True
            text = self.prefixes[index] + text
        if logprobs is not None:
            start = self.lengths[index]
            lp = logprobs.completion([entry], offset=start, limit=start + len(entry.text))
            if shape.echo and text is not entry.text:
                lp = join_logprobs(
                    logprobs.prompt(prompt_tokens_of([entry]), limit=len(self.prefixes[index])), lp
                )
        self.lengths[index] += len(entry.text)
        extra: dict[str, Any] = {"token_ids": entry.token_ids} if shape.token_ids else {}
        if shape.prompt_logprobs is not None and entry.prompt_logprobs is not None:
            extra["prompt_logprobs"] = shaped_prompt_logprobs(shape, [entry])
        return [self.chunk(index, text, lp=lp, **extra)]

    def tail(self, index: int, entry: StreamEntry) -> list[bytes]:
        out = []
        if not self.echoed[index] and self.prefixes[index]:
            self.echoed[index] = True
            out.append(self.chunk(index, self.prefixes[index]))
        if entry.full_text:
            out.append(self.chunk(index, entry.full_text))
        return out

    def finish(self, index: int, entry: StreamEntry) -> bytes:
        return self.chunk(index, "", finish_reason(entry.finish_reason), cache_hit=entry.cache_hit)


def completion_stream(jobs: Sequence[Job], *, shape: Shape, started: float) -> AsyncIterator[bytes]:
    """A completions request's stream: a batch of prompts, each with its ``n`` choices."""
    first = jobs[0]
    chunks = _Chunks(
        f"cmpl-{first.id.hex}", "text_completion", first, created_ts(first), fingerprint(shape.model), shape,
        _Usage(jobs), choice_fields=("token_ids", "prompt_token_ids", "prompt_logprobs"),
    )  # fmt: skip
    return _stream(jobs, chunks=chunks, hooks=_CompletionHooks(jobs, shape, chunks), started=started)
