"""TGI response bodies and stream events, shaped from a job's row and stream entries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import ApiError
from gateway.sse import KEEPALIVE, Timing, cancel_on_disconnect, sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job, JobFinish

if TYPE_CHECKING:
    from inference.prompts import ModelInfo  # a version's tokenizer and template (ServedModel.info)


def finish_reason(reason: str) -> str:
    # TGI knows three reasons (its clients parse them as an enum): an output guard's stop reads
    # as a stop sequence.
    words: dict[str, str] = {
        JobFinish.EOS: "eos_token",
        JobFinish.STOP_SEQUENCE: "stop_sequence",
        JobFinish.LENGTH: "length",
    }
    return words.get(reason, "stop_sequence")


@dataclass(frozen=True)
class TgiOptions:
    """What a TGI request asked to see, and what TGI reports back."""

    info: ModelInfo
    seed: int | None  # the seed sampled with (drawn by the gateway when the client gave none)
    prefix: str  # return_full_text: the input, before the generated text
    top_n_tokens: int
    prefill: bool  # decoder_input_details
    input_length: int

    def token(self, token_id: int, text: str, logprob: float | None) -> dict[str, Any]:
        return {
            "id": token_id,
            "text": text,
            "logprob": logprob,
            "special": token_id in self.info.eos_token_ids,
        }

    def top(self, alternatives: Sequence[tuple[int, float]]) -> list[dict[str, Any]]:
        return [self.token(i, self.info.token_text(i), lp) for i, lp in alternatives[: self.top_n_tokens]]


@dataclass
class _Token:
    id: int
    text: str
    logprob: float
    top: list[tuple[int, float]]


def _tokens(entry: StreamEntry) -> list[_Token]:
    """One entry (one engine step) as TGI tokens: its text belongs to its last token (a step
    may hold text back for a stop string or an incomplete character)."""
    ids, logprobs, tops = entry.token_ids, entry.logprobs, entry.top_logprobs or []
    return [
        _Token(
            id=token_id,
            text=entry.text if position == len(ids) - 1 else "",
            logprob=logprobs[position] if position < len(logprobs) else 0.0,
            top=tops[position] if position < len(tops) else [],
        )
        for position, token_id in enumerate(ids)
    ]


def _prefill(entries: Sequence[StreamEntry], options: TgiOptions) -> list[dict[str, Any]]:
    for entry in entries:
        if entry.prompt_logprobs is not None:
            return [
                {"id": token_id, "text": options.info.token_text(token_id), "logprob": logprob}
                for token_id, logprob, *_ in entry.prompt_logprobs
            ]
    return []


def _sequence(
    job: Job, entries: Sequence[StreamEntry], options: TgiOptions, seed: int | None
) -> dict[str, Any]:
    """A generated sequence as TGI details (and a BestOfSequence) show it."""
    tokens = [t for entry in entries for t in _tokens(entry)]
    return {
        "generated_text": options.prefix + job.output_text,
        "finish_reason": finish_reason(job.finish_reason),
        "generated_tokens": (job.usage or {}).get("completion_tokens", len(tokens)),
        "seed": seed,
        "prefill": _prefill(entries, options) if options.prefill else [],
        "tokens": [options.token(t.id, t.text, t.logprob) for t in tokens],
        "top_tokens": [options.top(t.top) for t in tokens] if options.top_n_tokens else None,
    }


def _token_entries(job: Job) -> list[StreamEntry]:
    return [e for e in job_client.entries(str(job.id)) if e.kind == EntryKind.TOKEN]


def generate_body(job: Job, *, options: TgiOptions, details: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"generated_text": options.prefix + job.output_text}
    if not details:
        return body
    sequence = _sequence(job, _token_entries(job), options, options.seed)
    del sequence["generated_text"]
    body["details"] = {**sequence, "best_of_sequences": None}
    return body


def best_of_body(jobs: Sequence[Job], *, options: TgiOptions, details: bool) -> dict[str, Any]:
    """``best_of``: the sequence with the highest total log-probability answers; with
    ``details``, the others follow in ``best_of_sequences`` (as TGI does)."""
    entries = [_token_entries(job) for job in jobs]
    scores = [sum(lp for entry in job_entries for lp in entry.logprobs) for job_entries in entries]
    order = sorted(range(len(jobs)), key=lambda i: -scores[i])
    best = order[0]
    body: dict[str, Any] = {"generated_text": options.prefix + jobs[best].output_text}
    if not details:
        return body
    sequences = [_sequence(jobs[i], entries[i], options, jobs[i].params.get("seed")) for i in order]
    head = sequences[0]
    del head["generated_text"]
    body["details"] = {**head, "best_of_sequences": sequences[1:]}
    return body


def refused(exc: ApiError) -> list[bytes]:
    return [sse(exc.tgi_body())]


def generate_stream(job: Job, *, options: TgiOptions, started: float) -> AsyncIterator[bytes]:
    """TGI's /generate_stream: one event per token; the last carries generated_text/details."""
    timing = Timing(job, started)

    def event(index: int, token: _Token, last: dict[str, Any] | None = None) -> bytes:
        return sse(
            {
                "index": index,
                "token": options.token(token.id, token.text, token.logprob),
                "top_tokens": options.top(token.top) if options.top_n_tokens else None,
                "generated_text": last["generated_text"] if last else None,
                "details": last["details"] if last else None,
            }
        )

    async def events() -> AsyncIterator[bytes]:
        index = 0
        text = options.prefix
        pending: list[_Token] = []
        async for entry in job_client.follow(str(job.id)):
            if entry is None:
                yield KEEPALIVE
                continue
            if entry.kind == EntryKind.TOKEN:
                pending += _tokens(entry)
                # Hold the newest token back: if it is the last one, its event must carry
                # generated_text and details.
                while len(pending) > 1:
                    token = pending.pop(0)
                    index += 1
                    text += token.text
                    timing.token()
                    yield event(index, token)
            elif entry.kind == EntryKind.END:
                if entry.failed:
                    yield sse({"error": entry.error or "generation failed", "error_type": "generation"})
                    break
                if entry.full_text:
                    pending.append(_Token(0, entry.full_text, 0.0, []))
                usage = entry.usage or {}
                details = {
                    "finish_reason": finish_reason(entry.finish_reason),
                    "generated_tokens": usage.get("completion_tokens", index + len(pending)),
                    "seed": options.seed,
                    "input_length": usage.get("prompt_tokens", options.input_length),
                }
                if not pending:
                    pending.append(_Token(0, "", 0.0, []))
                for position, token in enumerate(pending):
                    index += 1
                    text += token.text
                    timing.token()
                    last = position == len(pending) - 1
                    yield event(index, token, {"generated_text": text, "details": details} if last else None)
        timing.done()

    return cancel_on_disconnect([str(job.id)], events())
