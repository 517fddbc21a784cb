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


def chat_body(job: Job, *, model: ServedModel, logprobs: Logprobs | None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job.id.hex}",
        "object": "chat.completion",
        "created": created_ts(job),
        "model": job.model,
        "system_fingerprint": fingerprint(model),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": job.output_text, "refusal": None},
                "finish_reason": finish_reason(job.finish_reason),
                "logprobs": logprobs.chat(_token_entries(job)) if logprobs is not None else None,
            }
        ],
        "usage": usage_or_zero(job),
        **sluice_extras(job),
    }


def completion_body(jobs: Sequence[Job], *, model: ServedModel, logprobs: Logprobs | None) -> dict[str, Any]:
    """One choice per prompt, in order; usage summed over them."""
    first = jobs[0]
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for job in jobs:
        for name, value in usage_or_zero(job).items():
            usage[name] += value
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
        "usage": usage,
        **sluice_extras(first),
    }
    return body


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
    job: Job,
    *,
    model: ServedModel,
    include_usage: bool,
    started: float,
    logprobs: Logprobs | None,
) -> AsyncIterator[bytes]:
    timing = Timing(job, started)
    response_id = f"chatcmpl-{job.id.hex}"
    created = created_ts(job)
    system_fingerprint = fingerprint(model)

    def chunk(delta: dict[str, Any], reason: str | None = None, lp: Any = None, **extra: Any) -> bytes:
        return sse(
            {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": job.model,
                "system_fingerprint": system_fingerprint,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": lp}],
                **extra,
            }
        )

    def delta(text: str | None) -> dict[str, Any]:
        # Every delta names the role and has tool_calls (null): TGI's chat client requires
        # both on every chunk; the openai SDK takes them as they are.
        return {"role": "assistant", "content": text, "tool_calls": None}

    async def events() -> AsyncIterator[bytes]:
        yield chunk(delta(""))
        async for entry in job_client.follow(str(job.id)):
            if entry is None:
                yield KEEPALIVE
            elif entry.kind == EntryKind.CITATIONS:
                # Sources before the tokens, as an extra field (as Perplexity's API does).
                yield chunk(delta(""), citations=entry.citations)
            elif entry.kind == EntryKind.TOKEN and (entry.text or (logprobs and entry.token_ids)):
                timing.token()
                lp = logprobs.chat([entry]) if logprobs is not None else None
                yield chunk(delta(entry.text), lp=lp)
            elif entry.kind == EntryKind.END:
                if entry.full_text:
                    yield chunk(delta(entry.full_text))
                if entry.failed:
                    yield sse(_error_chunk(entry))
                else:
                    yield chunk(delta(""), finish_reason(entry.finish_reason), cache_hit=entry.cache_hit)
                    if include_usage:
                        yield sse(
                            {
                                "id": response_id,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": job.model,
                                "system_fingerprint": system_fingerprint,
                                "choices": [],
                                "usage": entry.usage,
                            }
                        )
        timing.done()
        yield sse("[DONE]")

    return cancel_on_disconnect([str(job.id)], events())


def completion_stream(
    jobs: Sequence[Job],
    *,
    model: ServedModel,
    include_usage: bool,
    started: float,
    logprobs: Logprobs | None,
) -> AsyncIterator[bytes]:
    """One stream for a batch of prompts: each chunk's choice ``index`` names its prompt;
    chunks of different prompts interleave as they are generated."""
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

    async def one(index: int, job: Job, out: asyncio.Queue[tuple[int, StreamEntry | None] | None]) -> None:
        try:
            async for entry in job_client.follow(str(job.id)):
                await out.put((index, entry))
        finally:
            await out.put(None)

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[tuple[int, StreamEntry | None] | None] = asyncio.Queue()
        tasks = [asyncio.ensure_future(one(i, job, queue)) for i, job in enumerate(jobs)]
        offsets = [0] * len(jobs)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        running = len(jobs)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                index, entry = item
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
                    for name, value in (entry.usage or {}).items():
                        if name in usage:
                            usage[name] += value
            if include_usage:
                yield sse(
                    {
                        "id": response_id,
                        "object": "text_completion",
                        "created": created,
                        "model": first.model,
                        "system_fingerprint": system_fingerprint,
                        "choices": [],
                        "usage": usage,
                    }
                )
            timing.done()
            yield sse("[DONE]")
        finally:
            for task in tasks:
                task.cancel()

    return cancel_on_disconnect([str(job.id) for job in jobs], events())
