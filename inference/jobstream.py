"""The wire format of a job's Redis Stream: one typed entry, encoded and decoded here only.

A job's stream (``inference.streams.stream_key``) holds, in order:

- ``queued``: the job was accepted (written with the row, in its transaction);
- ``start``: an attempt began (``attempt`` counts from 1; a redelivered job has several);
- ``cite``: the knowledge-base passages retrieved into the prompt, before any token;
- ``tok``: new output of one engine step: its text, token ids and log-probabilities, the top
  alternatives when asked for, the prompt's log-probabilities on the first token when asked
  for, and the completion tokens so far;
- ``end``: the final status, written after the row (so a reader that sees it can trust the row);
- ``retry``: an attempt failed transiently, the job will be attempted again (``attempt``,
  ``error``, ``delay_s``);
- ``requeue``: a dead-lettered job was requeued by an operator; it continues after its
  earlier ``end``, which no longer counts.

Writers: the worker (`inference.streams.JobStreams`, fenced by its lease) and the services that
end a job without running it. Readers: the job client (`inference.client`), the only way the
gateway sees a stream, and the worker resuming a redelivered job. Field names are short: a
stream of a 4k-token answer holds thousands of entries.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class EntryKind(enum.StrEnum):
    QUEUED = "queued"
    START = "start"
    CITATIONS = "cite"
    TOKEN = "tok"  # noqa: S105 - an entry kind, not a secret
    END = "end"
    #: A transient failure: the job goes back to its queue and is attempted again later.
    RETRY = "retry"
    #: An operator requeued a dead-lettered job: entries after an earlier ``end`` continue it.
    REQUEUE = "requeue"


#: A token's alternatives: (token id, log-probability), most likely first.
TopLogprobs = list[tuple[int, float]]
#: A prompt token: (id, logprob) or (id, logprob, rank, alternatives).
PromptToken = tuple[Any, ...]


def _ints(raw: str) -> list[int]:
    return [int(i) for i in raw.split(",")] if raw else []


def _floats(raw: str) -> list[float]:
    return [float(x) for x in raw.split(",")] if raw else []


def _prompt_token(item: PromptToken) -> list[Any]:
    token_id, logprob = int(item[0]), None if item[1] is None else round(float(item[1]), 5)
    out: list[Any] = [token_id, logprob]
    if len(item) > 2:
        out.append(item[2])
    if len(item) > 3:
        out.append([[int(i), round(float(lp), 5)] for i, lp in item[3]])
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class StreamEntry:
    kind: str
    #: The Redis Stream id (``<ms>-<seq>``): the resume cursor. "" before it is written; "0-0"
    #: for an end entry synthesized from the job row after the stream expired.
    id: str = ""
    # tok
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] | None = None
    #: The prompt as the model saw it: per token (id, log-probability (None for the first),
    #: and, where asked for, its rank and alternatives ``[(id, logprob), ...]``).
    prompt_logprobs: list[PromptToken] | None = None
    completion_tokens: int = 0
    # start, retry
    attempt: int = 0
    #: start, when the request asked for them (return_token_ids): the prompt's ids as built.
    prompt_ids: list[int] | None = None
    delay_s: float = 0.0
    # cite
    citations: list[dict[str, Any]] = field(default_factory=list)
    # end
    status: str = ""
    finish_reason: str = ""
    usage: dict[str, int] | None = None
    error: str = ""
    cache_hit: bool = False
    #: Only on an end entry built from the row: the whole output (the tokens are gone).
    full_text: str | None = None

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def queued(cls) -> StreamEntry:
        return cls(EntryKind.QUEUED)

    @classmethod
    def start(cls, attempt: int, prompt_ids: Sequence[int] | None = None) -> StreamEntry:
        return cls(
            EntryKind.START, attempt=attempt, prompt_ids=list(prompt_ids) if prompt_ids is not None else None
        )

    @classmethod
    def retry(cls, *, attempt: int, error: str, delay_s: float) -> StreamEntry:
        return cls(EntryKind.RETRY, attempt=attempt, error=error, delay_s=delay_s)

    @classmethod
    def requeue(cls) -> StreamEntry:
        return cls(EntryKind.REQUEUE)

    @classmethod
    def cite(cls, citations: list[dict[str, Any]]) -> StreamEntry:
        return cls(EntryKind.CITATIONS, citations=citations)

    @classmethod
    def token(
        cls,
        *,
        text: str,
        token_ids: Sequence[int],
        logprobs: Sequence[float],
        completion_tokens: int,
        top_logprobs: Sequence[TopLogprobs] | None = None,
        prompt_logprobs: Sequence[PromptToken] | None = None,
    ) -> StreamEntry:
        return cls(
            EntryKind.TOKEN,
            text=text,
            token_ids=list(token_ids),
            logprobs=list(logprobs),
            completion_tokens=completion_tokens,
            top_logprobs=[list(t) for t in top_logprobs] if top_logprobs else None,
            prompt_logprobs=list(prompt_logprobs) if prompt_logprobs is not None else None,
        )

    @classmethod
    def end(
        cls,
        *,
        status: str,
        finish_reason: str,
        usage: dict[str, int] | None,
        error: str = "",
        cache_hit: bool = False,
        full_text: str | None = None,
        id: str = "",
    ) -> StreamEntry:
        return cls(
            EntryKind.END,
            id=id,
            status=status,
            finish_reason=finish_reason,
            usage=usage,
            error=error,
            cache_hit=cache_hit,
            full_text=full_text,
        )

    # -- wire ------------------------------------------------------------------------------------

    def encode(self) -> dict[str, str]:
        kind = self.kind
        if kind == EntryKind.TOKEN:
            fields = {
                "t": "tok",
                "x": self.text,
                "i": ",".join(str(i) for i in self.token_ids),
                "lp": ",".join(f"{lp:.5g}" for lp in self.logprobs),
                "n": str(self.completion_tokens),
            }
            if self.top_logprobs:
                fields["tl"] = json.dumps(
                    [[[int(i), round(float(lp), 5)] for i, lp in top] for top in self.top_logprobs],
                    separators=(",", ":"),
                )
            if self.prompt_logprobs is not None:
                fields["pl"] = json.dumps(
                    [_prompt_token(item) for item in self.prompt_logprobs], separators=(",", ":")
                )
            return fields
        if kind == EntryKind.END:
            fields = {
                "t": "end",
                "s": self.status,
                "f": self.finish_reason,
                "u": json.dumps(self.usage) if self.usage is not None else "",
                "e": self.error,
            }
            if self.cache_hit:
                fields["ch"] = "1"
            return fields
        if kind == EntryKind.START:
            fields = {"t": "start", "a": str(self.attempt)}
            if self.prompt_ids is not None:
                fields["p"] = ",".join(str(i) for i in self.prompt_ids)
            return fields
        if kind == EntryKind.RETRY:
            return {"t": "retry", "a": str(self.attempt), "e": self.error, "d": f"{self.delay_s:.3f}"}
        if kind == EntryKind.CITATIONS:
            return {"t": "cite", "c": json.dumps(self.citations, separators=(",", ":"))}
        return {"t": str(kind)}

    @classmethod
    def decode(cls, entry_id: Any, raw: Mapping[Any, Any]) -> StreamEntry:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        kind = fields.get("t", "")
        entry = cls(kind, id=_text(entry_id))
        if kind == EntryKind.TOKEN:
            entry.text = fields.get("x", "")
            entry.token_ids = _ints(fields.get("i", ""))
            entry.logprobs = _floats(fields.get("lp", ""))
            entry.completion_tokens = int(fields.get("n") or 0)
            if fields.get("tl"):
                entry.top_logprobs = [
                    [(int(i), float(lp)) for i, lp in top] for top in json.loads(fields["tl"])
                ]
            if "pl" in fields:
                entry.prompt_logprobs = [
                    (
                        int(item[0]),
                        item[1],
                        *item[2:3],
                        *([[tuple(a) for a in item[3]]] if len(item) > 3 else []),
                    )
                    for item in json.loads(fields["pl"])
                ]
        elif kind == EntryKind.END:
            entry.status = fields.get("s", "")
            entry.finish_reason = fields.get("f", "")
            entry.usage = json.loads(fields["u"]) if fields.get("u") else None
            entry.error = fields.get("e", "")
            entry.cache_hit = fields.get("ch") == "1"
        elif kind == EntryKind.START:
            entry.attempt = int(fields.get("a") or 1)
            if "p" in fields:
                entry.prompt_ids = _ints(fields["p"])
        elif kind == EntryKind.RETRY:
            entry.attempt = int(fields.get("a") or 1)
            entry.error = fields.get("e", "")
            entry.delay_s = float(fields.get("d") or 0)
        elif kind == EntryKind.CITATIONS:
            entry.citations = json.loads(fields["c"]) if fields.get("c") else []
        return entry

    @property
    def failed(self) -> bool:
        return self.kind == EntryKind.END and self.status == "failed"
