"""Structured outputs in the local backend: compiled grammars per version, token masks per step.

A `GrammarCache` belongs to one loaded model (one version): its llguidance tokenizer is built
once from the model's ``tokenizer.json``, and each distinct constraint is compiled once (an
`LLMatcher` in its start state, kept in an LRU) and deep-copied for every sequence that uses it
(microseconds). Compiling happens on the thread that submits the job (`ModelBackend.prepare`),
not on the engine's step loop.

`GrammarBatch` is one step's masks: llguidance fills a packed bitmask for the constrained rows
(in parallel, without the GIL), which is unpacked and applied to those rows' logits only; rows
without a grammar are not touched (see vLLM's ``v1/structured_output``: the same bitmask, the
same per-request matchers, applied in the model runner).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llguidance
import llguidance.torch
import torch

from inference.sampling_params import StructuredOutput
from inference.structured import grammar_of

#: Compiled constraints kept per version.
CACHE_SIZE = 256


class GrammarError(ValueError):
    """A constraint that does not compile, or a matcher that entered its error state."""


class GrammarCache:
    def __init__(
        self, tokenizer_file: Path, *, vocab_size: int, eos_token_ids: Sequence[int], threads: int = 1
    ) -> None:
        self.vocab_size = vocab_size
        eos = sorted(eos_token_ids) or None
        self.tokenizer = llguidance.LLTokenizer(str(tokenizer_file), n_vocab=vocab_size, eos_token=eos)
        self.executor = llguidance.LLExecutor(num_threads=max(1, threads))
        self._compiled: OrderedDict[StructuredOutput, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0
        self.hits = 0

    def compile(self, structured: StructuredOutput) -> Any:
        """The constraint's matcher in its start state (compiled once, then from the cache)."""
        with self._lock:
            template = self._compiled.get(structured)
            if template is not None:
                self._compiled.move_to_end(structured)
                self.hits += 1
                return template
        # Outside the lock: a large grammar takes a while (llguidance drops the GIL meanwhile).
        template = llguidance.LLMatcher(self.tokenizer, grammar_of(structured), log_level=0)
        if template.is_error():
            raise GrammarError(f"the output constraint does not compile: {template.get_error()}")
        with self._lock:
            self.compiles += 1
            self._compiled[structured] = template
            while len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        return template

    def matcher(self, structured: StructuredOutput, output_ids: Sequence[int] = ()) -> Any:
        """A fresh matcher for one sequence, advanced over tokens an earlier attempt generated."""
        matcher = self.compile(structured).deep_copy()
        if output_ids and not matcher.consume_tokens(list(output_ids)):
            raise GrammarError(f"the resumed output does not fit its constraint: {matcher.get_error()}")
        return matcher


class GrammarBatch:
    """The token masks of one step's constrained rows."""

    def __init__(self, cache: GrammarCache) -> None:
        self.cache = cache
        self._shifts = torch.arange(32, dtype=torch.int32)

    def apply(self, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[Any]) -> list[str | None]:
        """Mask ``logits[rows[i]]`` to the tokens ``matchers[i]`` allows, in place; returns, per
        row, the matcher's error (its sequence fails) or None."""
        errors: list[str | None] = [
            m.get_error() or "grammar error" if m.is_error() else None for m in matchers
        ]
        live = [i for i, error in enumerate(errors) if error is None]
        if not live:
            return errors
        vocab = logits.shape[-1]
        mask = torch.full(llguidance.torch.get_bitmask_shape(len(live), vocab), -1, dtype=torch.int32)
        llguidance.torch.fill_next_token_bitmask_par(
            self.cache.executor, [(matchers[i], slot) for slot, i in enumerate(live)], mask
        )
        # Packed int32 words -> one bool per token (bit j of word w is token 32 * w + j).
        allowed = ((mask[:, :, None] >> self._shifts) & 1).view(len(live), -1)[:, :vocab].bool()
        at = torch.tensor([rows[i] for i in live], dtype=torch.long, device=logits.device)
        logits[at] = logits[at].masked_fill(~allowed.to(logits.device), float("-inf"))
        return errors

    @staticmethod
    def advance(
        cache: GrammarCache, matchers: Sequence[Any], tokens: Sequence[int]
    ) -> list[tuple[bool, bool]]:
        """Feed each matcher its sampled token (in parallel): (accepted, finished) per matcher;
        a finished grammar admits no further token (its sequence ends there)."""
        accepted = cache.executor.consume_token_par(
            list(zip(matchers, (int(t) for t in tokens), strict=True))
        )
        return [
            (bool(ok), bool(ok) and bool(m.is_stopped())) for ok, m in zip(accepted, matchers, strict=True)
        ]
