"""Pure scheduling and text bookkeeping for the continuous-batching engine.

Nothing here imports Django, Celery, Redis or torch, so it is unit-tested on its own:
- `SequenceRequest`, `FinishReason`: what a sequence asks for (its `SamplingParams`) and how it ends.
- `Scheduler`: which waiting sequences join the batch between two decode steps.
- `IncrementalDecoder`: token ids -> text deltas without splitting a UTF-8 character.
- `StopMatcher`: stop strings, holding back text that may still turn into a stop string.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.sampling_params import SamplingParams


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the context window
    CANCELLED = "cancelled"
    DEADLINE = "deadline"
    ERROR = "error"
    LEASE_LOST = "lease_lost"  # another worker owns the job now: drop silently
    ABORTED = "aborted"  # this worker is shutting down: leave the job to another attempt
    CONTENT_FILTER = "content_filter"  # an output guard stopped it (the text before stays)


@dataclass
class SequenceRequest:
    """One sequence handed to the engine (one job).

    ``resume_ids`` are completion tokens an earlier attempt already streamed: they are fed to
    the model as context and not emitted again, so a redelivered job continues where it stopped.
    """

    key: str
    prompt_ids: list[int]
    params: SamplingParams
    resume_ids: list[int] = field(default_factory=list)
    resume_text: str = ""
    deadline: float | None = None  # engine clock (monotonic seconds)
    priority: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def context_len(self) -> int:
        return len(self.prompt_ids) + len(self.resume_ids)

    @property
    def remaining_new_tokens(self) -> int:
        return max(0, self.params.max_new_tokens - len(self.resume_ids))

    @property
    def token_budget(self) -> int:
        """KV-cache positions this sequence may occupy at most."""
        return self.context_len + self.remaining_new_tokens


class Scheduler:
    """Waiting room in front of the batch.

    Higher ``priority`` first, then arrival order. Between two decode steps, `admit` returns
    the sequences that fit: at most ``max_batch_size`` running in all, and the sum of their
    worst-case KV positions (prompt + max new tokens) within ``max_batch_tokens``. A sequence
    larger than ``max_batch_tokens`` on its own still runs, alone, so that it cannot starve.
    Admission is head-of-line: a big sequence at the head is not overtaken by smaller ones
    behind it (that would starve it under steady load).
    """

    def __init__(self, max_batch_size: int, max_batch_tokens: int) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("max_batch_size and max_batch_tokens must be positive")
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self._heap: list[tuple[int, int, SequenceRequest]] = []
        self._removed: set[str] = set()
        self._keys: set[str] = set()
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def keys(self) -> list[str]:
        return list(self._keys)

    def enqueue(self, request: SequenceRequest) -> None:
        if request.key in self._keys:
            raise ValueError(f"sequence {request.key} is already waiting")
        self._removed.discard(request.key)
        self._keys.add(request.key)
        heapq.heappush(self._heap, (-request.priority, next(self._counter), request))

    def remove(self, key: str) -> SequenceRequest | None:
        """Take a waiting sequence out (cancelled before it ran)."""
        if key not in self._keys:
            return None
        for _, _, request in self._heap:
            if request.key == key and key not in self._removed:
                self._removed.add(key)
                self._keys.discard(key)
                return request
        return None

    def _pop_removed(self) -> None:
        while self._heap and self._heap[0][2].key in self._removed:
            _, _, request = heapq.heappop(self._heap)
            self._removed.discard(request.key)

    def admit(
        self, running: int, running_tokens: int, prefill_tokens: int | None = None
    ) -> list[SequenceRequest]:
        """Sequences to add before the next decode step.

        ``prefill_tokens`` bounds the prompt tokens prefilled in one go (at least one sequence
        is admitted): a wave of arrivals is prefilled over several steps, so the sequences
        already decoding are not stalled for the whole wave (chunked admission).
        """
        admitted: list[SequenceRequest] = []
        prefill = 0
        while True:
            self._pop_removed()
            if not self._heap or running + len(admitted) >= self.max_batch_size:
                break
            head = self._heap[0][2]
            budget = head.token_budget
            batch_empty = running == 0 and not admitted
            if running_tokens + budget > self.max_batch_tokens and not batch_empty:
                break
            if prefill_tokens is not None and admitted and prefill + head.context_len > prefill_tokens:
                break
            prefill += head.context_len
            heapq.heappop(self._heap)
            self._keys.discard(head.key)
            admitted.append(head)
            running_tokens += budget
        return admitted


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    Decoding token by token breaks byte-level BPE (a character may span tokens) and
    SentencePiece (a lone token loses its leading space). As TGI and vLLM do, decode a short
    window ``ids[prefix:]`` and emit only what it adds over ``ids[prefix:read]``, and only once
    it no longer ends in an incomplete character (U+FFFD).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        # A few context tokens make the first delta decode with the right leading space.
        self.ids: list[int] = list(context_ids[-4:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        delta = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta


class StopMatcher:
    """Finds stop strings in generated text and decides how much text is safe to emit.

    Text that could be the beginning of a stop string is held back until it either completes
    the stop string (then it is dropped, as OpenAI does: the stop string is not returned, or
    kept with ``include``, as TGI does) or cannot anymore.
    """

    def __init__(self, stops: Sequence[str], *, include: bool = False) -> None:
        self.stops = tuple(s for s in stops if s)
        self.include = include
        self._longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._disarmed = 0  # text up to here was fed before the matcher was armed

    def feed(self, delta: str, *, armed: bool = True) -> str:
        """Add decoded text; return the part that may be sent to the client now. Text fed
        while not ``armed`` (before min_tokens) is sent at once and never ends in a match."""
        if self.stopped:
            return ""
        self.text += delta
        if not armed:
            out = self.text[self.emitted :]
            self.emitted = len(self.text)
            self._disarmed = len(self.text)
            return out
        if not self.stops:
            out = self.text[self.emitted :]
            self.emitted = len(self.text)
            return out
        # Only a window that includes the new text can hold a new match (and none that ended
        # before the matcher was armed).
        search_from = max(0, self.emitted - self._longest)
        first: int | None = None
        matched = ""
        for stop in self.stops:
            index = self.text.find(stop, max(search_from, self._disarmed - len(stop) + 1))
            if index != -1 and (first is None or index < first):
                first, matched = index, stop
        if first is not None:
            self.stopped = True
            if self.include:
                first += len(matched)
            self.text = self.text[:first]
            out = self.text[self.emitted :] if first > self.emitted else ""
            self.emitted = len(self.text)
            return out
        safe = len(self.text) - self._held_suffix()
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def _held_suffix(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if size <= best:
                    break
                if self.text.endswith(stop[:size]):
                    best = size
                    break
        return best

    def flush(self) -> str:
        """At the end of generation, release held-back text (it never became a stop string)."""
        if self.stopped:
            return ""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out
