"""Per-sequence logits processing in the batched step: penalties, logit bias, ``min_tokens``.

Every sequence whose `SamplingParams` asks for one of them (``processed``) holds a *slot* here
for as long as it runs; sequences that ask for none hold nothing and pay nothing. A slot keeps,
as rows of tensors shared by the whole batch, what the processing needs across steps:

- ``counts``: how often each token was generated (OpenAI's presence and frequency penalties);
- ``seen``: which tokens are in the prompt or the output (transformers'/TGI's repetition penalty);
- ``bias``: the logit bias, dense (OpenAI logit_bias);
- ``allowed``: the only ids a sequence may generate (vLLM's allowed_token_ids);
- ``ban``: the ids that may not end the sequence before ``min_tokens`` (end of sequence and
  ``stop_token_ids``), with each slot's generated count and minimum.

Slots are not KV-cache rows (those move when a sequence leaves); a step gathers the slots of the
rows it samples and processes them with a handful of tensor ops over ``[n, vocab]``, whatever
``n`` is (no Python loop per sequence per step), as vLLM's batched logits processors do.

Semantics (each checked against a reference in tests/inference/backends/test_logits.py):
- repetition penalty (transformers' ``RepetitionPenaltyLogitsProcessor``): over prompt and
  output, a positive logit is divided by the penalty, a negative one multiplied;
- frequency / presence (OpenAI): ``logit -= frequency * count + presence * (count > 0)`` over
  the generated tokens only;
- bias: added to the logit;
- allowed: every other id is set to -inf;
- min_tokens: the banned ids are set to -inf while fewer tokens than asked were generated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inference.sampling_params import SamplingParams


class LogitsProcessors:
    def __init__(self, *, vocab_size: int, capacity: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.capacity = capacity
        self.device = device
        self._free = list(range(capacity - 1, -1, -1))
        self._params: dict[int, SamplingParams] = {}
        # Allocated on first use: a worker whose requests never ask for these holds nothing.
        self._counts: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        self._ban: torch.Tensor | None = None
        self._allowed: torch.Tensor | None = None
        self._scalars: torch.Tensor | None = None  # [capacity, 5]: see _COLUMNS

    _PRESENCE, _FREQUENCY, _REPETITION, _MIN_TOKENS, _GENERATED = range(5)

    def _grid(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.capacity, self.vocab_size, dtype=dtype, device=self.device)

    def admit(
        self,
        params: SamplingParams,
        *,
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        stop_ids: Sequence[int],
    ) -> int | None:
        """Take a slot for a sequence that needs one (None otherwise). ``output_ids``: tokens an
        earlier attempt already generated (a resumed job); ``stop_ids``: the ids ``min_tokens``
        holds back (end of sequence unless ignored, and ``stop_token_ids``)."""
        if not params.processed:
            return None
        if not self._free:
            raise RuntimeError("no logits-processing slot is free")
        slot = self._free.pop()
        self._params[slot] = params
        if self._scalars is None:
            self._scalars = torch.zeros(self.capacity, 5, dtype=torch.float32, device=self.device)
        self._scalars[slot] = torch.tensor(
            [
                params.presence_penalty,
                params.frequency_penalty,
                params.repetition_penalty,
                params.min_tokens,
                len(output_ids),
            ]
        )
        output = torch.tensor(list(output_ids), dtype=torch.long, device=self.device)
        if params.presence_penalty or params.frequency_penalty:
            if self._counts is None:
                self._counts = self._grid(torch.float32)
            self._counts[slot].zero_()
            self._counts[slot].index_add_(0, output, torch.ones(len(output), device=self.device))
        if params.repetition_penalty != 1.0:
            if self._seen is None:
                self._seen = self._grid(torch.bool)
            self._seen[slot].zero_()
            seen = torch.tensor([*prompt_ids, *output_ids], dtype=torch.long, device=self.device)
            self._seen[slot, seen] = True
        if params.logit_bias:
            if self._bias is None:
                self._bias = self._grid(torch.float32)
            self._bias[slot].zero_()
            ids, values = zip(*params.logit_bias, strict=True)
            self._bias[slot, list(ids)] = torch.tensor(values, dtype=torch.float32, device=self.device)
        if params.allowed_token_ids:
            if self._allowed is None:
                self._allowed = self._grid(torch.bool)
            self._allowed[slot].zero_()
            self._allowed[slot, list(params.allowed_token_ids)] = True
        if params.min_tokens > 0:
            if self._ban is None:
                self._ban = self._grid(torch.bool)
            self._ban[slot].zero_()
            if stop_ids:
                self._ban[slot, list(stop_ids)] = True
        return slot

    def release(self, slot: int | None) -> None:
        if slot is not None and slot in self._params:
            del self._params[slot]
            self._free.append(slot)

    def apply(self, logits: torch.Tensor, rows: Sequence[int], slots: Sequence[int]) -> None:
        """Process ``logits[rows]`` in place, row ``rows[i]`` with slot ``slots[i]``."""
        if not rows:
            return
        assert self._scalars is not None
        params = [self._params[slot] for slot in slots]
        index = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        at = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
        scalars = self._scalars[index]
        block = logits[at].float()
        if self._seen is not None and any(p.repetition_penalty != 1.0 for p in params):
            penalty = scalars[:, self._REPETITION, None]
            penalized = torch.where(block > 0, block / penalty, block * penalty)
            block = torch.where(self._seen[index], penalized, block)
        if self._counts is not None and any(p.presence_penalty or p.frequency_penalty for p in params):
            counts = self._counts[index]
            block -= scalars[:, self._FREQUENCY, None] * counts
            block -= scalars[:, self._PRESENCE, None] * (counts > 0)
        if self._bias is not None and any(p.logit_bias for p in params):
            block += self._bias[index]
        if self._allowed is not None and any(p.allowed_token_ids for p in params):
            limited = torch.tensor([bool(p.allowed_token_ids) for p in params], device=self.device)
            block.masked_fill_(~self._allowed[index] & limited[:, None], float("-inf"))
        if self._ban is not None and any(p.min_tokens for p in params):
            short = scalars[:, self._GENERATED] < scalars[:, self._MIN_TOKENS]
            block.masked_fill_(self._ban[index] & short[:, None], float("-inf"))
        logits[at] = block.to(logits.dtype)

    def observe(self, slots: Sequence[int], tokens: Sequence[int]) -> None:
        """The tokens just generated by the sequences of these slots."""
        if not slots:
            return
        assert self._scalars is not None
        index = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        chosen = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        self._scalars[index, self._GENERATED] += 1
        if self._counts is not None:
            self._counts.index_put_(
                (index, chosen), torch.ones(len(slots), device=self.device), accumulate=True
            )
        if self._seen is not None:
            self._seen[index, chosen] = True
