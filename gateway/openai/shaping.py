"""OpenAI response bodies and SSE chunks, shaped from a job's row and stream entries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError, envelope
from gateway.sse import KEEPALIVE, Timing, cancel_on_disconnect, sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job
from inference.prompts import ModelInfo
from inference.registry import ServedModel
from inference.services import EOS, STOP_SEQUENCE


def finish_reason(reason: str) -> str | None:
    if reason in (EOS, STOP_SEQUENCE):
        return "stop"
    return reason or None


def fingerprint(model: ServedModel) -> str:
    """``system_fingerprint``: which version (weights and settings) answered."""
    return f"fp_sluice_{model.version_id or 0}_{model.label}"[:64]


def created_ts(job: Job) -> int:
    return int(job.queued_at.timestamp()) if job.queued_at else int(time.time())


def usage_or_zero(job: Job) -> dict[str, int]:
    return job.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def shares_prompt(job: Job) -> bool:
    """A second or later choice of an n > 1 request: its prompt is counted with the first's."""
    return bool((job.params or {}).get("choice"))


def add_usage(total: dict[str, int], usage: dict[str, int] | None, *, shared_prompt: bool) -> None:
    """Usage over a request's jobs: every completion, each distinct prompt once."""
    usage = usage or {}
    prompt = 0 if shared_prompt else int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    total["prompt_tokens"] += prompt
    total["completion_tokens"] += completion
    total["total_tokens"] += prompt + completion


def usage_event(
    response_id: str, kind: str, *, created: int, model: str, fingerprint: str, usage: dict[str, int]
) -> bytes:
    """The last event of a stream with ``include_usage``: no choices, the request's usage."""
    return sse(
        {
            "id": response_id,
            "object": kind,
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": [],
            "usage": usage,
        }
    )


def usage_of(jobs: Sequence[Job]) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for job in jobs:
        add_usage(total, job.usage, shared_prompt=shares_prompt(job))
    return total


def sluice_extras(job: Job) -> dict[str, Any]:
    """Fields Sluice adds to OpenAI bodies (clients ignore fields they do not know)."""
    extras: dict[str, Any] = {"cache_hit": job.cache_hit}
    if job.citations:
        extras["citations"] = job.citations
    if job.session_id:
        extras["session_id"] = str(job.session_id)
    return extras


@dataclass(frozen=True)
class Logprobs:
    """Shapes the engine's log-probabilities the way each OpenAI API reports them."""

    info: ModelInfo
    eos: frozenset[int]
    top: int  # alternatives per token
    #: vLLM's ``return_tokens_as_token_ids``: tokens reported as ``token_id:<id>``, so that a
    #: client (another gateway in front of this one) gets exact ids whatever the tokenizer.
    as_ids: bool = False

    def _label(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.info.token_text(token_id)

    def _tokens(self, entry: StreamEntry) -> list[tuple[int, float, list[tuple[int, float]]]]:
        tops = entry.top_logprobs or []
        out = []
        for position, token_id in enumerate(entry.token_ids):
            if token_id in self.eos:
                continue  # the end-of-sequence token is not part of the text
            logprob = entry.logprobs[position] if position < len(entry.logprobs) else 0.0
            alternatives = tops[position] if position < len(tops) else []
            out.append((token_id, logprob, alternatives[: self.top]))
        return out

    def _item(self, token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "token": self._label(token_id),
            "logprob": logprob,
            "bytes": self.info.token_bytes(token_id),
        }

    def chat(self, entries: Sequence[StreamEntry]) -> dict[str, Any]:
        content = []
        for entry in entries:
            for token_id, logprob, alternatives in self._tokens(entry):
                item = self._item(token_id, logprob)
                item["top_logprobs"] = [self._item(i, lp) for i, lp in alternatives]
                content.append(item)
        return {"content": content, "refusal": None}

    def completion(self, entries: Sequence[StreamEntry], *, offset: int = 0) -> dict[str, Any]:
        tokens: list[str] = []
        token_logprobs: list[float] = []
        top_logprobs: list[dict[str, float]] = []
        text_offset: list[int] = []
        for entry in entries:
            for token_id, logprob, alternatives in self._tokens(entry):
                text = self.info.token_text(token_id)
                tokens.append(self._label(token_id))
                token_logprobs.append(logprob)
                top_logprobs.append({self._label(i): lp for i, lp in alternatives})
                text_offset.append(offset)
                offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }


def _token_entries(job: Job) -> list[StreamEntry]:
    return [e for e in job_client.entries(str(job.id)) if e.kind == EntryKind.TOKEN]


def chat_body(jobs: Sequence[Job], *, model: ServedModel, logprobs: Logprobs | None) -> dict[str, Any]:
    """One choice per job (n > 1: one job per choice, in order); the prompt counted once."""
    first = jobs[0]
    return {
        "id": f"chatcmpl-{first.id.hex}",
        "object": "chat.completion",
        "created": created_ts(first),
        "model": first.model,
        "system_fingerprint": fingerprint(model),
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": job.output_text, "refusal": None},
                "finish_reason": finish_reason(job.finish_reason),
                "logprobs": logprobs.chat(_token_entries(job)) if logprobs is not None else None,
            }
            for index, job in enumerate(jobs)
        ],
        "usage": usage_of(jobs),
        **sluice_extras(first),
    }


def completion_body(jobs: Sequence[Job], *, model: ServedModel, logprobs: Logprobs | None) -> dict[str, Any]:
    """One choice per job: prompts in order, each prompt's ``n`` choices together (OpenAI's
    ``index = prompt * n + choice``); usage counts each prompt once."""
    first = jobs[0]
    body = {
        "id": f"cmpl-{first.id.hex}",
        "object": "text_completion",
        "created": created_ts(first),
        "model": first.model,
        "system_fingerprint": fingerprint(model),
        "choices": [
            {
                "index": index,
                "text": job.output_text,
                "finish_reason": finish_reason(job.finish_reason),
                "logprobs": logprobs.completion(_token_entries(job)) if logprobs is not None else None,
            }
            for index, job in enumerate(jobs)
        ],
        "usage": usage_of(jobs),
        **sluice_extras(first),
    }
    return body


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


def chat_stream(
    jobs: Sequence[Job],
    *,
    model: ServedModel,
    include_usage: bool,
    started: float,
    logprobs: Logprobs | None,
) -> AsyncIterator[bytes]:
    """One stream for a request's choices (one job each): a chunk's choice ``index`` names
    its job; chunks of different choices interleave as they are generated."""
    first = jobs[0]
    timing = Timing(first, started)
    response_id = f"chatcmpl-{first.id.hex}"
    created = created_ts(first)
    system_fingerprint = fingerprint(model)

    def chunk(
        index: int, delta: dict[str, Any], reason: str | None = None, lp: Any = None, **extra: Any
    ) -> bytes:
        return sse(
            {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": first.model,
                "system_fingerprint": system_fingerprint,
                "choices": [{"index": index, "delta": delta, "finish_reason": reason, "logprobs": lp}],
                **extra,
            }
        )

    def delta(text: str | None) -> dict[str, Any]:
        # Every delta names the role and has tool_calls (null): TGI's chat client requires
        # both on every chunk; the openai SDK takes them as they are.
        return {"role": "assistant", "content": text, "tool_calls": None}

    async def events() -> AsyncIterator[bytes]:
        for index in range(len(jobs)):
            yield chunk(index, delta(""))
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        async for index, entry in follow_all(jobs):
            if entry is None:
                yield KEEPALIVE
            elif entry.kind == EntryKind.CITATIONS:
                # Sources before the tokens, as an extra field (as Perplexity's API does).
                yield chunk(index, delta(""), citations=entry.citations)
            elif entry.kind == EntryKind.TOKEN and (entry.text or (logprobs and entry.token_ids)):
                timing.token()
                lp = logprobs.chat([entry]) if logprobs is not None else None
                yield chunk(index, delta(entry.text), lp=lp)
            elif entry.kind == EntryKind.END:
                if entry.full_text:
                    yield chunk(index, delta(entry.full_text))
                if entry.failed:
                    yield sse(_error_chunk(entry))
                else:
                    yield chunk(
                        index, delta(""), finish_reason(entry.finish_reason), cache_hit=entry.cache_hit
                    )
                add_usage(usage, entry.usage, shared_prompt=shares_prompt(jobs[index]))
        if include_usage:
            yield usage_event(
                response_id,
                "chat.completion.chunk",
                created=created,
                model=first.model,
                fingerprint=system_fingerprint,
                usage=usage,
            )
        timing.done()
        yield sse("[DONE]")

    return cancel_on_disconnect([str(job.id) for job in jobs], events())


def completion_stream(
    jobs: Sequence[Job],
    *,
    model: ServedModel,
    include_usage: bool,
    started: float,
    logprobs: Logprobs | None,
) -> AsyncIterator[bytes]:
    """One stream for a batch of prompts (each with its ``n`` choices): a chunk's choice
    ``index`` names its job; chunks of different jobs interleave as they are generated."""
    first = jobs[0]
    timing = Timing(first, started)
    response_id = f"cmpl-{first.id.hex}"
    created = created_ts(first)
    system_fingerprint = fingerprint(model)

    def chunk(index: int, text: str, reason: str | None = None, lp: Any = None, **extra: Any) -> bytes:
        return sse(
            {
                "id": response_id,
                "object": "text_completion",
                "created": created,
                "model": first.model,
                "system_fingerprint": system_fingerprint,
                "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": lp}],
                **extra,
            }
        )

    async def events() -> AsyncIterator[bytes]:
        offsets = [0] * len(jobs)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        async for index, entry in follow_all(jobs):
            if entry is None:
                yield KEEPALIVE
            elif entry.kind == EntryKind.TOKEN and (entry.text or (logprobs and entry.token_ids)):
                timing.token()
                lp = None
                if logprobs is not None:
                    lp = logprobs.completion([entry], offset=offsets[index])
                    offsets[index] += sum(len(t) for t in lp["tokens"])
                yield chunk(index, entry.text, lp=lp)
            elif entry.kind == EntryKind.END:
                if entry.full_text:
                    yield chunk(index, entry.full_text)
                if entry.failed:
                    yield sse(_error_chunk(entry))
                else:
                    yield chunk(index, "", finish_reason(entry.finish_reason), cache_hit=entry.cache_hit)
                add_usage(usage, entry.usage, shared_prompt=shares_prompt(jobs[index]))
        if include_usage:
            yield usage_event(
                response_id,
                "text_completion",
                created=created,
                model=first.model,
                fingerprint=system_fingerprint,
                usage=usage,
            )
        timing.done()
        yield sse("[DONE]")

    return cancel_on_disconnect([str(job.id) for job in jobs], events())
