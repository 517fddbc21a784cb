"""OpenAI response bodies and SSE chunks, shaped from a job's row and stream entries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.prepare import PreparedRequest
from gateway.sse import sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job, JobFinish
from inference.tools.calls import ToolPlan
from inference.tools.stream import Call, ToolCallStream
from inference.versions.registry import ServedModel

if TYPE_CHECKING:
    from inference.prompts import ModelInfo  # a version's tokenizer and template (ServedModel.info)


def finish_reason(reason: str) -> str | None:
    if reason in (JobFinish.EOS, JobFinish.STOP_SEQUENCE):
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
    """Shapes the engine's log-probabilities the way each OpenAI API reports them.

    Every generated token has its entry, special ones (an end of sequence generated under
    ``ignore_eos``) included, as OpenAI and vLLM count them in ``completion_tokens``; a special
    token adds no text, so its ``text_offset`` is where the text stands after it.
    """

    info: ModelInfo
    eos: frozenset[int]
    top: int  # alternatives per token
    #: vLLM's ``return_tokens_as_token_ids``: tokens reported as ``token_id:<id>``, so that a
    #: client (another gateway in front of this one) gets exact ids whatever the tokenizer.
    as_ids: bool = False
    #: Legacy completions list ``logprobs + 1`` alternatives at most, the sampled token among
    #: them (OpenAI's and vLLM's rule, which chat's ``top_logprobs`` does not follow).
    include_sampled: bool = False

    def _label(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.info.token_text(token_id)

    def _tokens(self, entry: StreamEntry) -> list[tuple[int, float, list[tuple[int, float]]]]:
        tops = entry.top_logprobs or []
        out = []
        for position, token_id in enumerate(entry.token_ids):
            logprob = entry.logprobs[position] if position < len(entry.logprobs) else 0.0
            alternatives = list(tops[position] if position < len(tops) else [])[: self.top]
            if self.include_sampled and all(i != token_id for i, _ in alternatives):
                alternatives.append((token_id, logprob))
            out.append((token_id, logprob, alternatives))
        return out

    def _item(self, token_id: int, logprob: float) -> dict[str, Any]:
        item = {
            "token": self._label(token_id),
            "logprob": logprob,
            "bytes": self.info.token_bytes(token_id),
        }
        if self.info.is_special(token_id):
            item["special"] = True  # generated and counted, not part of the text (as TGI marks it)
        return item

    def chat(self, entries: Sequence[StreamEntry]) -> dict[str, Any]:
        content = []
        for entry in entries:
            for token_id, logprob, alternatives in self._tokens(entry):
                item = self._item(token_id, logprob)
                item["top_logprobs"] = [self._item(i, lp) for i, lp in alternatives]
                content.append(item)
        return {"content": content, "refusal": None}

    def completion(
        self, entries: Sequence[StreamEntry], *, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """``offset``: where the entries' text starts in the choice's text; ``limit``: that
        text's length so far (offsets never point past it)."""
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[str, float] | None] = []
        text_offset: list[int] = []
        for entry in entries:
            for token_id, logprob, alternatives in self._tokens(entry):
                tokens.append(self._label(token_id))
                token_logprobs.append(logprob)
                top_logprobs.append({self._label(i): lp for i, lp in alternatives})
                text_offset.append(offset if limit is None else min(offset, limit))
                if token_id not in self.eos and not self.info.is_special(token_id):
                    offset += len(self.info.token_text(token_id))
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }

    def prompt(self, prompt: Sequence[tuple[int, float | None]], *, limit: int) -> dict[str, Any]:
        """The prompt's tokens in the completion's form (``echo`` with ``logprobs``): the first
        has no log-probability, as in OpenAI's answer."""
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        offset = 0
        for token_id, logprob in prompt:
            tokens.append(self._label(token_id))
            token_logprobs.append(logprob)
            top_logprobs.append(None if logprob is None else {self._label(token_id): logprob})
            text_offset.append(min(offset, limit))
            offset += len(self.info.token_text(token_id)) if not self.info.is_special(token_id) else 0
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }


@dataclass(frozen=True)
class Shape:
    """What one request asked to see in its answer, beside its jobs."""

    model: ServedModel
    logprobs: Logprobs | None
    #: Choices answered per prompt (``best_of`` sampled more jobs; the likeliest n answer).
    n: int = 1
    tools: ToolPlan | None = None
    #: Completions: each prompt as prepared (its text and token ids, for ``echo``).
    prompts: Sequence[PreparedRequest] = ()
    include_usage: bool = False
    #: vLLM's ``stream_options.continuous_usage_stats``: usage so far on every chunk.
    continuous_usage: bool = False
    #: vLLM's ``return_token_ids``: the prompt's and each choice's token ids.
    token_ids: bool = False
    echo: bool = False
    #: vLLM's ``prompt_logprobs``: each prompt token's log-probability (and alternatives).
    prompt_logprobs: int | None = None


def _token_entries(job: Job) -> list[StreamEntry]:
    return [e for e in job_client.entries(str(job.id)) if e.kind == EntryKind.TOKEN]


def _prompt_ids(entries: Sequence[StreamEntry]) -> list[int] | None:
    for entry in entries:
        if entry.kind == EntryKind.START and entry.prompt_ids is not None:
            return entry.prompt_ids
    return None


def shaped_prompt_logprobs(shape: Shape, entries: Sequence[StreamEntry]) -> list[Any] | None:
    """vLLM's ``prompt_logprobs``: per prompt position, None for the first, else a map of the
    token (and up to ``prompt_logprobs`` alternatives) to its logprob, rank and text."""
    if shape.prompt_logprobs is None:
        return None
    info = shape.model.info
    for entry in entries:
        if entry.prompt_logprobs is None:
            continue
        out: list[Any] = []
        for position, item in enumerate(entry.prompt_logprobs):
            token_id, logprob = item[0], item[1]
            if position == 0 or logprob is None:
                out.append(None)
                continue
            rank = item[2] if len(item) > 2 else None
            found = {
                str(token_id): {"logprob": logprob, "rank": rank, "decoded_token": info.token_text(token_id)}
            }
            for number, (alt_id, alt_lp) in enumerate(
                (item[3] if len(item) > 3 else [])[: shape.prompt_logprobs]
            ):
                found.setdefault(
                    str(alt_id),
                    {"logprob": alt_lp, "rank": number + 1, "decoded_token": info.token_text(alt_id)},
                )
            out.append(found)
        return out
    return None


def best_of(jobs: Sequence[Job], *, n: int, prompts: int) -> list[Job]:
    """``best_of``: of each prompt's jobs (consecutive), the ``n`` with the highest total
    log-probability, likeliest first (OpenAI's and vLLM's rule); with as many jobs as choices,
    every job in order."""
    per_prompt = len(jobs) // max(1, prompts)
    if per_prompt <= n:
        return list(jobs)
    chosen: list[Job] = []
    for start in range(0, len(jobs), per_prompt):
        group = jobs[start : start + per_prompt]
        scores = [sum(lp for entry in _token_entries(job) for lp in entry.logprobs) for job in group]
        order = sorted(range(len(group)), key=lambda i: -scores[i])
        chosen += [group[i] for i in order[:n]]
    return chosen


# -- tool calls -------------------------------------------------------------------------------


def tool_call_id(job: Job) -> str:
    # A function of the job: a replayed or re-read answer names its calls the same way.
    return f"call_{job.id.hex[:24]}"


def _tool_call(call: Call, index: int) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def chat_finish(job_reason: str, calls: bool) -> str | None:
    reason = finish_reason(job_reason)
    return "tool_calls" if calls and reason == "stop" else reason


def _message(job: Job, shape: Shape) -> tuple[dict[str, Any], bool]:
    """The assistant message of one choice, with its tool calls read from the text."""
    message: dict[str, Any] = {"role": "assistant", "content": job.output_text, "refusal": None}
    if shape.tools is None or not shape.tools.active:
        return message, False
    reader = ToolCallStream(shape.tools, call_id=tool_call_id(job))
    reader.read_all(job.output_text)
    if not reader.calls:
        return message, False
    message["content"] = reader.content.strip() or None
    message["tool_calls"] = [_tool_call(call, index) for index, call in enumerate(reader.calls)]
    return message, True


def chat_body(jobs: Sequence[Job], *, shape: Shape) -> dict[str, Any]:
    """One choice per job (n > 1: one job per choice, in order); the prompt counted once."""
    first = jobs[0]
    usage = usage_of(jobs)
    choices = []
    for index, job in enumerate(best_of(jobs, n=shape.n, prompts=1)):
        entries = job_client.entries(str(job.id))
        tokens = [e for e in entries if e.kind == EntryKind.TOKEN]
        message, calls = _message(job, shape)
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "finish_reason": chat_finish(job.finish_reason, calls),
            "logprobs": shape.logprobs.chat(tokens) if shape.logprobs is not None else None,
        }
        if shape.token_ids:
            choice["token_ids"] = [i for entry in tokens for i in entry.token_ids]
        choices.append(choice)
    body: dict[str, Any] = {
        "id": f"chatcmpl-{first.id.hex}",
        "object": "chat.completion",
        "created": created_ts(first),
        "model": first.model,
        "system_fingerprint": fingerprint(shape.model),
        "choices": choices,
        "usage": usage,
        **sluice_extras(first),
    }
    if shape.token_ids:
        body["prompt_token_ids"] = _prompt_ids(job_client.entries(str(first.id)))
    if shape.prompt_logprobs is not None:
        # vLLM's chat answer has one prompt, at the top.
        body["prompt_logprobs"] = shaped_prompt_logprobs(
            shape, [e for e in job_client.entries(str(first.id)) if e.kind == EntryKind.TOKEN]
        )
    return body


def completion_body(jobs: Sequence[Job], *, shape: Shape) -> dict[str, Any]:
    """One choice per job: prompts in order, each prompt's ``n`` choices together (OpenAI's
    ``index = prompt * n + choice``); usage counts each prompt once."""
    first = jobs[0]
    usage = usage_of(jobs)
    choices = []
    for index, job in enumerate(best_of(jobs, n=shape.n, prompts=max(1, len(shape.prompts)))):
        entries = job_client.entries(str(job.id))
        tokens = [e for e in entries if e.kind == EntryKind.TOKEN]
        prefix = echo_prefix(job, shape)
        text = prefix + job.output_text
        logprobs = None
        if shape.logprobs is not None:
            logprobs = shape.logprobs.completion(tokens, offset=len(prefix), limit=len(text))
            if shape.echo:
                logprobs = join_logprobs(
                    shape.logprobs.prompt(prompt_tokens_of(tokens), limit=len(prefix)), logprobs
                )
        choice: dict[str, Any] = {
            "index": index,
            "text": text,
            "finish_reason": finish_reason(job.finish_reason),
            "logprobs": logprobs,
        }
        if shape.token_ids:
            choice["token_ids"] = [i for entry in tokens for i in entry.token_ids]
            choice["prompt_token_ids"] = _prompt_ids(entries)
        if shape.prompt_logprobs is not None:
            choice["prompt_logprobs"] = shaped_prompt_logprobs(shape, tokens)
        choices.append(choice)
    return {
        "id": f"cmpl-{first.id.hex}",
        "object": "text_completion",
        "created": created_ts(first),
        "model": first.model,
        "system_fingerprint": fingerprint(shape.model),
        "choices": choices,
        "usage": usage,
        **sluice_extras(first),
    }


def echo_prefix(job: Job, shape: Shape) -> str:
    """``echo``: the prompt as text before the completion (a token-id prompt, decoded)."""
    if not shape.echo:
        return ""
    if isinstance(job.input.get("prompt"), str):
        return str(job.input["prompt"])
    return shape.model.info.decode([int(i) for i in job.input.get("prompt_ids") or []])


def prompt_tokens_of(tokens: Sequence[StreamEntry]) -> list[tuple[int, float | None]]:
    for entry in tokens:
        if entry.prompt_logprobs is not None:
            return [(int(item[0]), item[1]) for item in entry.prompt_logprobs]
    return []


def join_logprobs(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {key: [*first[key], *second[key]] for key in first}
