# structure: one backend class whose prefill, decode step, slots and prefix-cache use share
# per-sequence state; storage, kernels and sampling are in kv_cache.py, prefix_cache.py,
# llama_step.py, logits.py and sampling.py.
"""A local Hugging Face causal LM, continuously batched, with fused prefill and a prefix cache.

Why not `model.generate()`: it cannot take a new sequence into a running batch, and it costs
~26% over a hand-written loop on small models (DESIGN.md §2). Why not HF's `DynamicCache`: it
concatenates every layer's whole cache on every step, which for a full batch on CPU is a
large share of the step. Instead (`kv_cache.py` has the storage):

- every sequence owns a row of a pre-allocated `SlotKVCache`, its KV left-aligned;
- one forward pass per `step` carries the decode token of every running sequence *and*
  prefill chunks of new ones, packed into one ``[1, T]`` input under a per-step token budget
  (as vLLM's chunked prefill and TGI's token budget do): a wave of new prompts delays the
  running sequences by at most one budget's worth of compute per step, never a whole wave;
- a step with nothing waiting is decode-only;
- a new sequence first copies the longest cached block-aligned prefix of its prompt from the
  `PrefixCache` (a shared system prompt, the same RAG passages, a session's earlier turns),
  and prefills only the rest.
"""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from inference.backends import native
from inference.backends.base import ModelBackend, Sampled
from inference.backends.grammar import GrammarBatch, GrammarCache, GrammarError
from inference.backends.kv_cache import Chunk, SlotKVCache, StepPlan, planned, register_attention
from inference.backends.llama_step import LlamaStep
from inference.backends.logits import LogitsProcessors
from inference.backends.packed_linear import pack_linears, packable
from inference.backends.prefix_cache import PrefixBlock, PrefixCache
from inference.backends.sampling import sample_batch
from inference.backends.torch_setup import configure_threads, resolve_device, resolve_dtype
from inference.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class TorchCausalLMBackend(ModelBackend):
    """Runs any local HF causal-LM directory (Llama, Mistral, Qwen2, ... with full attention)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        threads: int = 0,
        max_batch_size: int = 32,
        max_prefill_tokens: int = 4096,
        step_tokens: int = 256,
        prefix_cache_bytes: int = 0,
        prefix_block_size: int = 16,
        eos_token_ids: Sequence[int] | None = None,
        vocab_decode: Any = None,
        packed_linear: bool = True,
        fused_step: bool = True,
        preallocate_rows: bool = True,
        native_dir: str | Path | None = None,
        native_attention: str = "auto",
    ) -> None:
        # transformers is loaded by the worker that serves a local version, when it loads one.
        from transformers import AutoConfig, AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        self.threads = configure_threads(threads) if resolve_device(device).type == "cpu" else threads
        self.device = resolve_device(device)
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        self.dtype = resolve_dtype(dtype, self.device, getattr(config, "dtype", None))
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=self.dtype, attn_implementation=register_attention(), local_files_only=True
        )
        self.quantized = dtype == "int8"
        if self.quantized:
            if self.device.type != "cpu":
                raise ValueError("int8 dynamic quantization runs on the CPU only")
            # Linear weights to int8, activations quantized on the fly: about twice the speed of
            # float32 at small batches on CPU (DESIGN.md §2); bfloat16 wins at large ones.
            with warnings.catch_warnings():
                # torch marks its eager-mode quantization deprecated in favour of torchao, which
                # is not a dependency here; it works in the pinned torch 2.13.
                warnings.simplefilter("ignore", UserWarning)
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model: Any = model.to(self.device).eval()
        #: The step without transformers' module stack (llama_step.py), fused before packing so
        #: that the fused q/k/v and gate/up layers are the ones packed; None: the generic path.
        self._llama_step = LlamaStep.build(self.model) if fused_step else None
        #: Linear layers running on oneDNN-packed weights (packed_linear.py: decode steps are
        #: bound by reading weights, and the packed layout reads faster); 0 where not packed.
        self.packed_linears = (
            pack_linears(self.model, self.dtype)
            if packed_linear and not self.quantized and packable(self.device, self.dtype)
            else 0
        )
        text_config = config.get_text_config(decoder=True)
        self.vocab_size = int(text_config.vocab_size)
        self.context_length = int(getattr(text_config, "max_position_embeddings", 2048))
        heads = int(text_config.num_attention_heads)
        self.kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
        self.head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
        self.n_layers = int(text_config.num_hidden_layers)
        # None: from the model's config; an explicit (possibly empty) list wins.
        self.eos_token_ids = (
            self._config_eos(config) if eos_token_ids is None else frozenset(int(i) for i in eos_token_ids)
        )
        self._decode_fn = vocab_decode
        self.max_batch_size = max_batch_size
        #: Tokens one `add` prefills per forward pass (nothing else runs meanwhile).
        self.max_prefill_tokens = max_prefill_tokens
        #: Tokens one `step` computes: a decode token per running sequence, the rest prefill.
        self.step_tokens = max(1, step_tokens)
        self.cache = SlotKVCache(
            layers=self.n_layers,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
            # Every row of a full batch now, not on the request path: growing the buffers copies
            # them all (about 0.6 GB for 64 rows of the bench's 110M Llama), which stalled every
            # running sequence when a burst first filled the batch. Columns still grow on demand.
            rows=max_batch_size if preallocate_rows else min(8, max_batch_size),
            cols=128,
        )
        self.prefix = PrefixCache(
            layers=self.n_layers,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
            block_size=prefix_block_size,
            budget_bytes=prefix_cache_bytes,
        )
        #: Penalties, logit bias and min_tokens of the sequences that ask for them (logits.py).
        self.processors = LogitsProcessors(
            vocab_size=self.vocab_size, capacity=max_batch_size, device=self.device
        )
        self._grammars: GrammarCache | None = None  # output constraints (grammar.py), on first use
        self.rows: list[_Seq] = []  # row i of the cache holds rows[i]
        self._by_key: dict[str, _Seq] = {}
        self._pending: list[_Seq] = []  # still prefilling, first come first served
        #: Prompt tokens computed by the last `step` (the rest of its tokens were decodes).
        self.last_step_prefill = 0
        #: The native attention kernel's build under ``native_dir`` (None: torch's attention).
        self._kernel = (
            native.kernel(Path(native_dir)) if native_dir is not None and native_attention != "off" else None
        )
        self.attention_fallback = self._native_unfit(native_attention)
        self.attention = "gemm" if self.attention_fallback else "native"
        dtype_name = "int8-dynamic" if self.quantized else str(self.dtype).removeprefix("torch.")
        self.description = f"{self.device.type}/{dtype_name}"
        logger.info(
            "loaded %s (%s, %d layers, context %d, threads %s, %d oneDNN-packed linears, attention %s%s)",
            self.model_dir,
            self.description,
            self.n_layers,
            self.context_length,
            self.threads,
            self.packed_linears,
            self.attention,
            f": {self.attention_fallback}" if self.attention_fallback else "",
        )

    def _native_unfit(self, mode: str) -> str:
        """Why the native attention kernel does not serve this model ("" when it does).
        ``mode``: ``auto`` or ``on`` (wherever it fits: it measured faster than the GEMMs in
        every dtype, bench/attention.py), ``off``."""
        kernel = self._kernel
        if mode == "off":
            return "turned off (SLUICE_NATIVE_ATTENTION=off)"
        if kernel is None:
            return "no build directory was given for it"
        if kernel.module is None:
            return kernel.reason
        if self.device.type != "cpu":
            return f"the kernel is the CPU's ({self.device.type} uses torch's attention)"
        if self.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"{self.dtype} is not a dtype of the kernel"
        if self.head_dim % native.LANES:
            return f"head_dim {self.head_dim} is not a multiple of {native.LANES}"
        return ""

    def _config_eos(self, config: Any) -> frozenset[int]:
        ids: set[int] = set()
        for source in (config, _read_json(self.model_dir / "generation_config.json")):
            value = (
                source.get("eos_token_id")
                if isinstance(source, dict)
                else getattr(source, "eos_token_id", None)
            )
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    # -- ModelBackend --
    @property
    def batch_keys(self) -> list[str]:
        return [seq.key for seq in self.rows]

    def decode(self, token_ids: Sequence[int]) -> str:
        if self._decode_fn is None:
            raise RuntimeError("backend has no tokenizer; pass vocab_decode")
        return str(self._decode_fn(token_ids))

    def grammars(self) -> GrammarCache:
        """Compiled output constraints of this model (built on first use: most versions never
        see one)."""
        if self._grammars is None:
            self._grammars = GrammarCache(
                self.model_dir / "tokenizer.json",
                vocab_size=self.vocab_size,
                eos_token_ids=sorted(self.eos_token_ids),
                threads=self.threads or 1,
            )
        return self._grammars

    def prepare(self, params: SamplingParams) -> None:
        if params.structured is not None:
            self.grammars().compile(params.structured)  # on the job's thread, not in a step

    def _processing(self, param: SamplingParams, ids: list[int], resumed: int) -> tuple[int | None, Any]:
        """The sequence's logits-processing slot and grammar matcher (None: it needs none)."""
        prompt, output = ids[: len(ids) - resumed], ids[len(ids) - resumed :]
        matcher = self.grammars().matcher(param.structured, output) if param.structured is not None else None
        stop_ids = [*param.stop_token_ids, *(() if param.ignore_eos else self.eos_token_ids)]
        slot = self.processors.admit(param, prompt_ids=prompt, output_ids=output, stop_ids=stop_ids)
        return slot, matcher

    # Every method that touches the cache runs in inference mode: tensors created there may
    # only be modified there.
    @torch.inference_mode()
    def enqueue(
        self,
        keys: Sequence[str],
        token_ids: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        resumed: Sequence[int] | None = None,
    ) -> dict[str, Sampled | Exception]:
        """Take sequences into the batch without computing anything: the next `step`s prefill
        them, chunk by chunk, alongside the running sequences' decodes. Returns only errors."""
        results: dict[str, Sampled | Exception] = {}
        todo: list[tuple[str, list[int], SamplingParams, int]] = []
        for index, (key, ids, param) in enumerate(zip(keys, token_ids, params, strict=True)):
            error = self._check_ids(ids)
            if error is not None:
                results[key] = ValueError(error)
            elif key in self._by_key:
                results[key] = ValueError(f"sequence {key} is already in the batch")
            else:
                todo.append((key, list(ids), param, resumed[index] if resumed else 0))
        if len(self.rows) + len(todo) > self.max_batch_size:
            raise RuntimeError("batch is full")
        if not todo:
            return results
        self._ensure_capacity(len(self.rows) + len(todo), max(len(ids) for _, ids, _, _ in todo) + 1)
        for key, ids, param, done in todo:
            try:
                slot, matcher = self._processing(param, ids, done)
            except GrammarError as exc:
                results[key] = exc
                continue
            seq = _Seq(key=key, params=param, generator=self._generator(param), ids=ids, prompt_len=len(ids))
            seq.slot, seq.matcher = slot, matcher
            seq.row = len(self.rows)
            self.rows.append(seq)
            self._by_key[key] = seq
            leader = None if param.prompt_logprobs is not None else self._same_prompt(ids)
            if param.prompt_logprobs is not None:
                seq.prompt_logprobs = [None]  # needs every prompt position's logits: no cache hit
            elif leader is not None:
                # The same prompt is being prefilled (n > 1, best_of): prefilled once, then
                # this one copies its KV and samples its first token from the same logits.
                seq.leader = leader
            else:
                # At least the last prompt token is computed: its logits give the first token.
                seq.blocks = self.prefix.match(ids, len(ids) - 1)
                if seq.blocks:
                    self.prefix.copy_into(seq.blocks, *self._row_views(seq.row))
                    seq.computed = len(seq.blocks) * self.prefix.block_size
            self._pending.append(seq)
        return results

    @torch.inference_mode()
    def add(
        self, keys: Sequence[str], token_ids: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> dict[str, Sampled | Exception]:
        """Prefill these sequences now (nothing else advances) and return their first tokens."""
        results = self.enqueue(keys, token_ids, params)
        mine = {key for key in keys if key in self._by_key and self._by_key[key].prefilling}
        for key in mine:
            seq = self._by_key[key]
            if seq.leader is not None and seq.leader.key not in mine:
                seq.leader = None  # its leader is not prefilled by this call: do it itself
        while any(self._by_key[key].prefilling for key in mine):
            results.update(self._forward(decode=False, budget=self.max_prefill_tokens, only=mine))
        failed = [key for key in mine if isinstance(results.get(key), Exception)]
        if failed:  # as if never added: the caller has nothing to remove
            self.remove(failed)
        return results

    @torch.inference_mode()
    def step(self) -> dict[str, Sampled | Exception]:
        return self._forward(decode=True, budget=self.step_tokens)

    def _same_prompt(self, ids: list[int]) -> _Seq | None:
        """A waiting sequence that prefills exactly ``ids`` itself (no logprobs of the prompt)."""
        for seq in self._pending:
            if (
                seq.leader is None
                and seq.prompt_logprobs is None
                and seq.prompt_len == len(ids)
                and seq.ids[: seq.prompt_len] == ids
            ):
                return seq
        return None

    def _check_ids(self, ids: Sequence[int]) -> str | None:
        if not ids:
            return "empty prompt"
        if len(ids) >= self.context_length:
            return f"prompt of {len(ids)} tokens does not fit the context window of {self.context_length}"
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            return f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})"
        return None

    def _row_views(self, row: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [k[row] for k in self.cache.keys], [v[row] for v in self.cache.values]

    def _ensure_capacity(self, rows: int, cols: int) -> None:
        if rows > self.cache.row_capacity or cols > self.cache.col_capacity:
            self.cache.resize(
                max(self.cache.row_capacity, min(self.max_batch_size, _grow(rows))),
                max(self.cache.col_capacity, _grow(cols)),
                [seq.computed for seq in self.rows],
            )

    def _forward(
        self, *, decode: bool, budget: int, only: set[str] | None = None
    ) -> dict[str, Sampled | Exception]:
        """One packed forward pass: decodes (when ``decode``) then prefill chunks in arrival
        order until ``budget`` tokens; returns the tokens sampled (decodes and completed
        prompts)."""
        decoding = [seq for seq in self.rows if not seq.prefilling] if decode else []
        if decoding:
            self._ensure_capacity(len(self.rows), max(seq.computed for seq in decoding) + 1)
        plan = StepPlan(
            cache=self.cache,
            kernel=self._kernel.module if self._kernel and not self.attention_fallback else None,
        )
        input_ids: list[int] = []
        positions: list[int] = []
        for seq in decoding:
            plan.decode_rows.append(seq.row)
            plan.decode_positions.append(seq.computed)
            input_ids.append(seq.ids[seq.computed])
            positions.append(seq.computed)
        # Logits wanted: every decode, the last prompt token of a completed prompt, and every
        # position of a prompt whose log-probabilities were asked for.
        keep: list[int] = list(range(len(decoding)))
        sample: list[_Seq] = list(decoding)
        sample_index: list[int] = list(range(len(decoding)))  # rows of the logits, in `sample` order
        spans: list[tuple[_Seq, Chunk, int]] = []  # prompt-logprob chunks: their first row in keep
        advanced: list[tuple[_Seq, int]] = []
        left = max(budget - len(decoding), min(budget, self.prefix.block_size) if decoding else 1)
        forks: list[tuple[_Seq, _Seq]] = []  # (leader, follower) when the leader's prompt completes
        for seq in self._pending:
            if left <= 0:
                break
            if seq.leader is not None or (only is not None and seq.key not in only):
                continue
            length = min(seq.prompt_len - seq.computed, left)
            chunk = Chunk(row=seq.row, start=seq.computed, length=length, offset=len(input_ids))
            plan.chunks.append(chunk)
            advanced.append((seq, length))
            input_ids.extend(seq.ids[seq.computed : seq.computed + length])
            positions.extend(range(seq.computed, seq.computed + length))
            left -= length
            if seq.prompt_logprobs is not None:
                spans.append((seq, chunk, len(keep)))
                keep.extend(range(chunk.offset, chunk.offset + length))
            elif seq.computed + length == seq.prompt_len:
                keep.append(chunk.offset + length - 1)
            if seq.computed + length == seq.prompt_len:
                sample.append(seq)
                sample_index.append(len(keep) - 1)
                for follower in self._pending:
                    if follower.leader is seq and (only is None or follower.key in only):
                        forks.append((seq, follower))
                        sample.append(follower)
                        sample_index.append(len(keep) - 1)  # the leader's last-position logits
        if not input_ids:
            self.last_step_prefill = 0
            return {}
        plan.prepare(self.device)
        with planned(plan):
            ids_t, positions_t, keep_t = (
                torch.tensor(values, dtype=torch.long, device=self.device)
                for values in (input_ids, positions, keep)
            )
            forward = self._llama_step or self._generic_forward
            hidden_logits = forward(plan, ids_t, positions_t, keep_t)  # [len(keep), vocab]
        self.last_step_prefill = sum(chunk.length for chunk in plan.chunks)
        for seq, chunk, first in spans:
            rows = hidden_logits[first : first + chunk.length]
            self._collect_prompt_logprobs(
                seq, rows, chunk.start, chunk.start + chunk.length == seq.prompt_len
            )
        for seq, length in advanced:
            seq.computed += length
        for seq in decoding:
            seq.computed += 1
        for leader, follower in forks:
            self.cache.move_row(leader.row, follower.row, leader.prompt_len)
            follower.computed, follower.leader = follower.prompt_len, None

        # Each sampled sequence its own row (followers of one prompt share the leader's logits,
        # and their processing must not see each other's).
        whole = sample_index == list(range(len(keep)))
        logits = hidden_logits if whole else hidden_logits[sample_index]
        sampled = sample_batch(
            logits,
            [seq.params for seq in sample],
            [seq.generator for seq in sample],
            process=self._processor(sample),
        )
        self._after_sampling(sample, sampled)
        results: dict[str, Sampled | Exception] = {}
        for seq, outcome in zip(sample, sampled, strict=True):
            if not isinstance(outcome, Exception):
                if seq.prompt_logprobs is not None and len(seq.ids) == seq.prompt_len:
                    outcome = replace(
                        outcome,
                        prompt_logprobs=tuple(seq.prompt_logprobs),
                        prompt_top=tuple(seq.prompt_top) if seq.params.prompt_logprobs else None,
                    )
                seq.ids.append(outcome.token_id)
            results[seq.key] = outcome
        completed = [seq for seq in self._pending if not seq.prefilling]
        if completed:
            self._pending = [seq for seq in self._pending if seq.prefilling]
            for seq in self._pending:
                if seq.leader is not None and not seq.leader.prefilling:
                    seq.leader = None  # not forked with it (outside ``only``): prefill it itself
            for seq in completed:
                if seq.prompt_logprobs is None:
                    # Now, not at the end: sequences arriving meanwhile (n > 1, a shared system
                    # prompt) reuse this prompt's blocks.
                    self.prefix.extend(seq.blocks, seq.ids, seq.prompt_len, *self._row_views(seq.row))
        return results

    def _processor(self, sample: list[_Seq]) -> Any:
        """The step's logits processing for the sampled rows that ask for any (None: none do)."""
        processed = [(row, seq.slot) for row, seq in enumerate(sample) if seq.slot is not None]
        constrained = [(row, seq.matcher) for row, seq in enumerate(sample) if seq.matcher is not None]
        if not processed and not constrained:
            return None

        def process(logits: torch.Tensor) -> dict[int, Exception]:
            if processed:
                rows, slots = zip(*processed, strict=True)
                self.processors.apply(logits, rows, slots)
            failed: dict[int, Exception] = {}
            if constrained:
                rows, matchers = zip(*constrained, strict=True)
                errors = GrammarBatch(self.grammars()).apply(logits, rows, matchers)
                for row, error in zip(rows, errors, strict=True):
                    if error is not None:
                        failed[row] = GrammarError(f"output constraint: {error}")
            return failed

        return process

    def _after_sampling(self, sample: list[_Seq], sampled: list[Sampled | Exception]) -> None:
        """Penalty counts and grammars follow the tokens just chosen; a grammar that is
        complete ends its sequence with this token."""
        processed = [
            (seq.slot, outcome.token_id)
            for seq, outcome in zip(sample, sampled, strict=True)
            if seq.slot is not None and not isinstance(outcome, Exception)
        ]
        if processed:
            slots, tokens = zip(*processed, strict=True)
            self.processors.observe(slots, tokens)
        constrained = [
            (row, seq.matcher, outcome)
            for row, (seq, outcome) in enumerate(zip(sample, sampled, strict=True))
            if seq.matcher is not None and not isinstance(outcome, Exception)
        ]
        if constrained:
            rows, matchers, outcomes = zip(*constrained, strict=True)
            advanced = GrammarBatch.advance(self.grammars(), matchers, [o.token_id for o in outcomes])
            for row, outcome, (accepted, finished) in zip(rows, outcomes, advanced, strict=True):
                if not accepted:
                    sampled[row] = GrammarError(
                        f"token {outcome.token_id} does not fit the output constraint"
                    )
                elif finished:
                    sampled[row] = replace(outcome, final="stop")

    def _generic_forward(
        self, plan: StepPlan, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """The packed step through transformers' own forward (any architecture); ``plan`` is
        already the current one (`planned`)."""
        return self.model(
            input_ids=input_ids[None],
            # Attention follows the plan; transformers only needs a mask that it leaves alone.
            attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.device),
            position_ids=positions[None],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=keep,
        ).logits[0]

    def _collect_prompt_logprobs(self, seq: _Seq, logits: torch.Tensor, start: int, completes: bool) -> None:
        """log p(prompt token i+1 | tokens up to i) for the chunk's positions ``start ..``, with
        its rank and the most likely alternatives when the sequence asked for them (vLLM's
        prompt_logprobs=k)."""
        assert seq.prompt_logprobs is not None
        wanted = seq.params.prompt_logprobs or 0
        count = logits.shape[0] - (1 if completes else 0)  # the last position predicts the first new token
        for lo in range(0, count, 256):  # slices: a long prompt's full log-softmax would be large
            hi = min(count, lo + 256)
            block = torch.log_softmax(logits[lo:hi].float(), dim=-1)
            targets = torch.tensor(
                seq.ids[start + lo + 1 : start + hi + 1], dtype=torch.long, device=block.device
            )
            chosen = block.gather(1, targets[:, None])
            seq.prompt_logprobs += chosen[:, 0].tolist()
            if wanted:
                ranks = ((block > chosen).sum(dim=-1) + 1).tolist()
                values, indices = torch.topk(block, min(wanted, block.shape[-1]), dim=-1)
                seq.prompt_top += [
                    (rank, tuple(zip(ids, lps, strict=True)))
                    for rank, ids, lps in zip(ranks, indices.tolist(), values.tolist(), strict=True)
                ]

    def _generator(self, param: SamplingParams) -> torch.Generator | None:
        if param.greedy:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(param.seed if param.seed is not None else random.getrandbits(63))
        return generator

    def kv_usage(self) -> tuple[int, int]:
        used = sum(seq.computed for seq in list(self.rows))
        return used, self.cache.row_capacity * self.cache.col_capacity

    def prefix_cache_stats(self) -> dict[str, int]:
        stats = self.prefix.stats.as_dict()
        stats.update(
            blocks_used=self.prefix.blocks_used,
            blocks_capacity=self.prefix.capacity,
            block_size=self.prefix.block_size,
        )
        return stats

    @torch.inference_mode()
    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            seq = self._by_key.pop(key, None)
            if seq is None:
                continue
            self.processors.release(seq.slot)
            seq.matcher = None
            # Its whole computed history (prompt and answer) stays cached for a next turn.
            self.prefix.extend(seq.blocks, seq.ids, seq.computed, *self._row_views(seq.row))
            self.prefix.release(seq.blocks)
            seq.blocks = []
            last = self.rows.pop()
            if last is not seq:
                # Keep rows contiguous: the last row moves into the hole.
                self.cache.move_row(last.row, seq.row, last.computed)
                last.row = seq.row
                self.rows[seq.row] = last
        self._pending = [seq for seq in self._pending if seq.key in self._by_key]
        for seq in self._pending:
            if seq.leader is not None and seq.leader.key not in self._by_key:
                seq.leader = None  # its leader left before its prompt was done: prefill it itself

    @torch.inference_mode()
    def warmup(self) -> None:
        params = SamplingParams(max_tokens=4, temperature=0.0)
        self.add(["__warmup__"], [[1, 2, 3, 4]], [params])
        for _ in range(3):
            self.step()
        self.remove(["__warmup__"])
        self.prefix.clear()
        self.prefix.allocate()
        # The output-constraint vocabulary (llguidance's view of the tokenizer) is built here, at
        # load: seconds for a large vocabulary, which the first constrained request would pay.
        self.grammars()

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass(eq=False)
class _Seq:
    """A sequence in the batch: its row, its tokens and how many of them have KV."""

    key: str
    params: SamplingParams
    generator: torch.Generator | None
    ids: list[int]  # prompt (with any resumed tokens), then every token sampled
    prompt_len: int
    row: int = 0
    computed: int = 0  # positions whose keys/values are in the row (columns [0, computed))
    blocks: list[PrefixBlock] = field(default_factory=list)  # prefix-cache blocks held
    prompt_logprobs: list[float | None] | None = None  # collected while prefilling, when asked
    #: With prompt_logprobs=k: per prompt position after the first, (rank, k alternatives).
    prompt_top: list[tuple[int, tuple[tuple[int, float], ...]]] = field(default_factory=list)
    leader: _Seq | None = field(default=None, repr=False)  # prefills the same prompt for it
    slot: int | None = None  # its logits-processing slot (penalties, bias, min_tokens)
    matcher: Any = field(default=None, repr=False)  # its output constraint's llguidance matcher

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_len


def _grow(n: int) -> int:
    size = 64
    while size < n:
        size *= 2
    return size


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
