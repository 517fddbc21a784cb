"""The contract between the engine and whatever runs the model.

The engine (``inference/engine.py``) owns scheduling and text; a backend owns tensors. Only
modules in ``inference/backends/`` import torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from inference.sampling_params import SamplingParams


@dataclass(frozen=True)
class Sampled:
    """One generated token and its log-probability under the model.

    ``top``: the most likely tokens at this position with their log-probabilities, most likely
    first (as many as the sequence's ``top_logprobs`` asks for; empty otherwise).
    ``prompt_logprobs``: on a sequence's first token only, when its ``prompt_logprobs`` is set:
    the log-probability of every prompt token given the ones before it (None for the first).
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    prompt_logprobs: tuple[float | None, ...] | None = None
    #: With the prompt's log-probabilities, when alternatives were asked for: per prompt
    #: position after the first, the token's rank and the most likely tokens there.
    prompt_top: tuple[tuple[int, tuple[tuple[int, float], ...]], ...] | None = None
    #: Remote backends whose upstream sends text, not token ids: the token's text as the
    #: upstream sent it (the engine uses it instead of detokenizing ``token_id``).
    text: str | None = None
    #: The sequence ends with this token ("stop": a remote upstream's end of sequence or stop
    #: string, or a local output constraint that is complete; "length": the upstream's token
    #: limit). With ``token_id == NO_TOKEN`` it carries no token, only the end (and, when the
    #: upstream reported it, its count of completion tokens).
    final: str | None = None
    completion_tokens: int | None = None


#: ``Sampled.token_id`` of an end marker that carries no token.
NO_TOKEN = -1


class ModelBackend(ABC):
    """A causal LM that decodes many sequences together, one token per sequence per step.

    The engine calls, from a single thread:
    - `enqueue` to take new sequences (prompt plus any resumed tokens) into the batch; by
      default that is `add`, which prefills them and samples the first token of each;
    - `step` to decode one more token for every sequence currently held (and, for a backend
      that fuses prefill into its steps, to prefill the next chunk of the new ones);
    - `remove` to drop sequences that finished, were cancelled or failed.

    A remote backend (a TGI server) cannot produce tokens on the engine's clock: its `add`
    and `step` return only the sequences that have a new token (a sequence missing from the
    result simply has none yet); the engine treats both kinds the same.

    Errors that concern one sequence only (bad token ids, a sampling failure) must be
    returned for that sequence, not raised, so that the rest of the batch goes on. An
    exception raised from `step` fails every sequence in the batch.
    """

    #: Token ids that end a sequence (end-of-sequence, end-of-turn).
    eos_token_ids: frozenset[int] = frozenset()
    #: Maximum positions (prompt + generated) a sequence may occupy.
    context_length: int = 2048
    #: Human-readable description of device and dtype, for logs and the worker heartbeat.
    description: str = ""
    #: The attention a local backend runs: ``native`` (native/attention.cpp), ``gemm`` (torch's
    #: batched GEMMs and SDPA; ``attention_fallback`` says why), "" for a remote backend.
    attention: str = ""
    attention_fallback: str = ""

    @abstractmethod
    def add(
        self, keys: Sequence[str], token_ids: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> dict[str, Sampled | Exception]:
        """Prefill these sequences into the batch; return each one's first token (or its error)."""

    def enqueue(
        self,
        keys: Sequence[str],
        token_ids: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        resumed: Sequence[int] | None = None,
    ) -> dict[str, Sampled | Exception]:
        """Take sequences into the batch; what the engine calls. A backend that fuses prefill
        into its steps (the local torch one) only queues them here and returns their errors,
        and their first tokens come from later `step`s; by default, `add`. ``resumed``: per
        sequence, how many of its last ids an earlier attempt generated (penalties, min_tokens
        and grammars count them as output)."""
        return self.add(keys, token_ids, params)

    def prepare(self, params: SamplingParams) -> None:  # noqa: B027 - optional hook
        """Called on the submitting thread, before the sequence reaches the engine's loop: work
        that may take a while (compiling an output constraint) is done here, not in a step.
        Raises for a request this backend cannot serve (the sequence fails alone)."""

    def prefix_cache_stats(self) -> dict[str, int] | None:
        """Prefix-cache counters (lookups, lookup_tokens, hit_tokens, inserted_blocks,
        evicted_blocks, blocks_used, blocks_capacity, block_size); None without one."""
        return None

    @abstractmethod
    def step(self) -> dict[str, Sampled | Exception]:
        """Decode one token for every sequence held."""

    @abstractmethod
    def remove(self, keys: Sequence[str]) -> None:
        """Forget these sequences and free their cache."""

    @abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids to text (special tokens skipped)."""

    @property
    @abstractmethod
    def batch_keys(self) -> list[str]:
        """Keys of the sequences currently held, in batch order."""

    def warmup(self) -> None:  # noqa: B027 - optional hook: most backends need none
        """Run a short generation so that the first real request does not pay one-time costs."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (GPU memory, connections)."""

    def wake(self) -> None:  # noqa: B027 - optional hook: a local step never waits
        """New work arrived (called from any thread): a `step` that is waiting for remote
        tokens returns now, so that a new sequence is not held up behind that wait."""

    def served_by(self, key: str) -> str:
        """Where a sequence runs (a remote backend's replica URL); "" for a local model."""
        return ""

    def kv_usage(self) -> tuple[int, int]:
        """Key/value cache positions in use and allocated (the console's KV usage); a
        backend without a local cache (a remote server) reports ``(0, 0)``. Called from the
        heartbeat thread while the engine runs: an approximate reading is fine."""
        return 0, 0
