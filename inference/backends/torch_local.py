"""A local Hugging Face causal LM, batched with a pre-allocated slot KV cache.

Why not `model.generate()`: it cannot take a new sequence into a running batch, and it costs
~26% over a hand-written loop on small models (DESIGN.md §2). Why not HF's `DynamicCache`: it
concatenates every layer's whole cache on every step, which for a full batch on CPU is a
large share of the step. Instead:

- `SlotKVCache` holds, per layer, keys/values of shape [rows, kv_heads, columns, head_dim].
  Rows are sequences (active rows are kept contiguous from 0); columns are positions shared by
  the batch. Each row's valid columns are ``[start, t)``; a row that joined later starts
  further right, and the columns before its start are masked out.
- The model is called with our own 4D boolean attention mask and per-row position ids, so
  rows of different lengths decode together in one forward pass.
- New sequences are prefilled together (left-padded) in a temporary cache and copied into
  free rows, right-aligned at the shared column ``t``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inference.backends.base import ModelBackend, Sampled
from inference.batching import SamplingParams

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device, config_dtype: Any = None) -> torch.dtype:
    if setting == "int8":
        return torch.float32  # int8 weights (dynamic quantization), float32 activations and cache
    if setting != "auto":
        if setting not in _DTYPES:
            raise ValueError(f"unsupported dtype {setting!r}; choose one of {[*sorted(_DTYPES), 'int8']}")
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(config_dtype, torch.dtype):
        return config_dtype
    if isinstance(config_dtype, str) and config_dtype in _DTYPES:
        return _DTYPES[config_dtype]
    return torch.float32


def configure_threads(threads: int) -> int:
    """Pin torch's intra-op threads: on a small machine, oversubscription is a 50x slowdown."""
    count = threads if threads > 0 else max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(count)
    # Interop threads can only be set once per process, before any parallel work.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return count


class SlotKVCache:
    """Keys/values for a batch of rows sharing a column axis.

    Implements the part of transformers' cache interface that decoder layers call
    (``update``, ``get_seq_length``); the mask is always passed as a prepared 4D tensor, so
    the mask helpers never query the cache.
    """

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        rows: int,
        cols: int,
    ) -> None:
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.keys = [self._alloc(rows, cols) for _ in range(layers)]
        self.values = [self._alloc(rows, cols) for _ in range(layers)]
        self.t = 0  # columns in use; the next token of every row is written at column t

    def _alloc(self, rows: int, cols: int) -> torch.Tensor:
        return torch.zeros(rows, self.kv_heads, cols, self.head_dim, dtype=self.dtype, device=self.device)

    @property
    def row_capacity(self) -> int:
        return self.keys[0].shape[0]

    @property
    def col_capacity(self) -> int:
        return self.keys[0].shape[2]

    # -- transformers cache interface --
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, _, q_len, _ = key_states.shape
        end = self.t + q_len
        self.keys[layer_idx][:rows, :, self.t : end].copy_(key_states)
        self.values[layer_idx][:rows, :, self.t : end].copy_(value_states)
        return self.keys[layer_idx][:rows, :, :end], self.values[layer_idx][:rows, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.t

    # -- capacity management --
    def resize(self, rows: int, cols: int, used_rows: int) -> None:
        """Grow (or shrink) buffers, keeping the first ``used_rows`` rows and ``t`` columns."""
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = self._alloc(rows, cols)
                keep_rows, keep_cols = min(used_rows, rows), min(self.t, cols)
                if keep_rows and keep_cols:
                    new[:keep_rows, :, :keep_cols].copy_(old[:keep_rows, :, :keep_cols])
                store[i] = new

    def shift(self, used_rows: int, offset: int) -> None:
        """Move the used columns of the used rows by ``offset`` (right if > 0, left if < 0)."""
        if offset == 0 or used_rows == 0:
            self.t = max(0, self.t + offset)
            return
        src_lo = 0 if offset > 0 else -offset
        length = self.t - src_lo
        for store in (self.keys, self.values):
            for buf in store:
                moved = buf[:used_rows, :, src_lo : src_lo + length].clone()
                buf[:used_rows, :, src_lo + offset : src_lo + offset + length].copy_(moved)
        self.t += offset

    def move_row(self, src: int, dst: int) -> None:
        for store in (self.keys, self.values):
            for buf in store:
                buf[dst, :, : self.t].copy_(buf[src, :, : self.t])


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
        eos_token_ids: Sequence[int] | None = None,
        vocab_decode: Any = None,
    ) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        self.threads = configure_threads(threads) if resolve_device(device).type == "cpu" else threads
        self.device = resolve_device(device)
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        self.dtype = resolve_dtype(dtype, self.device, getattr(config, "dtype", None))
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=self.dtype, attn_implementation="sdpa", local_files_only=True
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
        self.max_prefill_tokens = max_prefill_tokens
        self.cache = self._new_cache(rows=min(8, max_batch_size), cols=256)
        self.keys: list[str] = []
        self.starts: list[int] = []
        self.last_tokens: list[int] = []
        self.params: list[SamplingParams] = []
        self.generators: list[torch.Generator | None] = []
        dtype_name = "int8-dynamic" if self.quantized else str(self.dtype).removeprefix("torch.")
        self.description = f"{self.device.type}/{dtype_name}"
        logger.info(
            "loaded %s (%s, %d layers, context %d, threads %s)",
            self.model_dir,
            self.description,
            self.n_layers,
            self.context_length,
            self.threads,
        )

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

    def _new_cache(self, rows: int, cols: int) -> SlotKVCache:
        return SlotKVCache(
            layers=self.n_layers,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
            rows=rows,
            cols=cols,
        )

    # -- ModelBackend --
    @property
    def batch_keys(self) -> list[str]:
        return list(self.keys)

    def decode(self, token_ids: Sequence[int]) -> str:
        if self._decode_fn is None:
            raise RuntimeError("backend has no tokenizer; pass vocab_decode")
        return str(self._decode_fn(token_ids))

    # Every method that touches the cache runs in inference mode: tensors created there may
    # only be modified there.
    @torch.inference_mode()
    def add(
        self, keys: Sequence[str], token_ids: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> dict[str, Sampled | Exception]:
        results: dict[str, Sampled | Exception] = {}
        todo: list[tuple[str, list[int], SamplingParams]] = []
        for key, ids, param in zip(keys, token_ids, params, strict=True):
            error = self._check_ids(ids)
            if error is not None:
                results[key] = ValueError(error)
            else:
                todo.append((key, list(ids), param))
        if len(self.keys) + len(todo) > self.max_batch_size:
            raise RuntimeError("batch is full")
        # A sequence that wants its prompt's log-probabilities needs logits at every position:
        # it is prefilled alone, so that the others keep computing only the last one.
        for item in [item for item in todo if item[2].prompt_logprobs]:
            results.update(self._prefill_chunk([item], all_logits=True))
        todo = [item for item in todo if not item[2].prompt_logprobs]
        # Similar lengths together waste less padding; chunks bound the prefill's memory.
        todo.sort(key=lambda item: len(item[1]))
        chunk: list[tuple[str, list[int], SamplingParams]] = []
        for item in todo:
            longest = max([len(item[1])] + [len(c[1]) for c in chunk])
            if chunk and longest * (len(chunk) + 1) > self.max_prefill_tokens:
                results.update(self._prefill_chunk(chunk))
                chunk = []
            chunk.append(item)
        if chunk:
            results.update(self._prefill_chunk(chunk))
        return results

    def _check_ids(self, ids: Sequence[int]) -> str | None:
        if not ids:
            return "empty prompt"
        if len(ids) >= self.context_length:
            return f"prompt of {len(ids)} tokens does not fit the context window of {self.context_length}"
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            return f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})"
        return None

    @torch.inference_mode()
    def _prefill_chunk(
        self, chunk: list[tuple[str, list[int], SamplingParams]], *, all_logits: bool = False
    ) -> dict[str, Sampled | Exception]:
        k = len(chunk)
        lengths = [len(ids) for _, ids, _ in chunk]
        width = max(lengths)
        pads = [width - n for n in lengths]
        input_ids = torch.zeros(k, width, dtype=torch.long)
        for row, (_, ids, _) in enumerate(chunk):
            input_ids[row, pads[row] :] = torch.tensor(ids, dtype=torch.long)
        pad_t = torch.tensor(pads, dtype=torch.long)
        cols = torch.arange(width)
        positions = (cols[None, :] - pad_t[:, None]).clamp(min=0)
        causal = cols[None, :, None] >= cols[None, None, :]  # [1, q, c]: c <= q
        valid = cols[None, None, :] >= pad_t[:, None, None]  # [k, 1, c]: c >= pad
        diagonal = torch.eye(width, dtype=torch.bool)[None]  # pads attend to themselves: no NaN rows
        mask = ((causal & valid) | diagonal)[:, None]

        tmp = self._new_cache(rows=k, cols=width)
        output_logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=tmp,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
        ).logits
        logits = output_logits[:, -1, :]
        prompt_logprobs: list[tuple[float | None, ...] | None] = [None] * k
        if all_logits:
            for row in range(k):
                prompt_logprobs[row] = _prompt_logprobs(output_logits[row], input_ids[row], pads[row])
            del output_logits
        tmp.t = width

        self._make_room(new_rows=k, width=width)
        base = len(self.keys)
        left = self.cache.t - width
        for layer in range(self.n_layers):
            self.cache.keys[layer][base : base + k, :, left : self.cache.t].copy_(
                tmp.keys[layer][:k, :, :width]
            )
            self.cache.values[layer][base : base + k, :, left : self.cache.t].copy_(
                tmp.values[layer][:k, :, :width]
            )
        generators = [self._generator(param) for _, _, param in chunk]
        sampled = self._sample(logits, [param for _, _, param in chunk], generators)
        results: dict[str, Sampled | Exception] = {}
        for row, (key, _, param) in enumerate(chunk):
            outcome = sampled[row]
            if not isinstance(outcome, Exception) and prompt_logprobs[row] is not None:
                outcome = Sampled(outcome.token_id, outcome.logprob, outcome.top, prompt_logprobs[row])
            results[key] = outcome
            if isinstance(outcome, Exception):
                continue
            self.keys.append(key)
            self.starts.append(self.cache.t - lengths[row])
            self.last_tokens.append(outcome.token_id)
            self.params.append(param)
            self.generators.append(generators[row])
        # Rows whose first sample failed were copied but not registered: the next row
        # registered overwrites them, and they are never read (rows >= len(self.keys)).
        self._compact_rows_after_failed(base, k, [isinstance(s, Exception) for s in sampled])
        return results

    def _compact_rows_after_failed(self, base: int, k: int, failed: list[bool]) -> None:
        if not any(failed):
            return
        dst = base
        for i in range(k):
            if not failed[i]:
                if dst != base + i:
                    self.cache.move_row(base + i, dst)
                dst += 1

    def _generator(self, param: SamplingParams) -> torch.Generator | None:
        if param.greedy:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(param.seed if param.seed is not None else random.getrandbits(63))
        return generator

    def _make_room(self, *, new_rows: int, width: int) -> None:
        """Ensure rows for newcomers and ``t >= width`` so they can be right-aligned at ``t``."""
        used = len(self.keys)
        if used == 0:
            self.cache.t = 0
        elif max(self.cache.t, width) + 1 > self.cache.col_capacity or min(self.starts) > self.cache.t // 2:
            # Copying every row's cache is expensive: only when columns run out or when more
            # than half of them are dead (they cost attention time on every step).
            self._compact_left()
        rows_needed = used + new_rows
        cols_needed = max(self.cache.t, width) + 1
        if rows_needed > self.cache.row_capacity or cols_needed > self.cache.col_capacity:
            rows = max(self.cache.row_capacity, min(self.max_batch_size, _grow(rows_needed)))
            cols = max(self.cache.col_capacity, _grow(cols_needed))
            self.cache.resize(rows, cols, used)
        if self.cache.t < width:
            offset = width - self.cache.t
            self.cache.shift(used, offset)
            self.starts = [s + offset for s in self.starts]

    def _compact_left(self) -> None:
        """Drop columns that no active row uses any more (they only cost attention time)."""
        if not self.keys:
            return
        low = min(self.starts)
        if low > 0:
            self.cache.shift(len(self.keys), -low)
            self.starts = [s - low for s in self.starts]

    def kv_usage(self) -> tuple[int, int]:
        cache, starts = self.cache, list(self.starts)
        used = sum(max(0, cache.t - start) for start in starts)
        return used, cache.row_capacity * cache.col_capacity

    @torch.inference_mode()
    def step(self) -> dict[str, Sampled | Exception]:
        n = len(self.keys)
        if n == 0:
            return {}
        if self.cache.t + 1 > self.cache.col_capacity:
            self._compact_left()
            if self.cache.t + 1 > self.cache.col_capacity:
                self.cache.resize(self.cache.row_capacity, _grow(self.cache.t + 1), n)
        elif min(self.starts) > max(64, self.cache.t // 2):
            self._compact_left()
        t = self.cache.t
        starts = torch.tensor(self.starts, dtype=torch.long)
        input_ids = torch.tensor(self.last_tokens, dtype=torch.long)[:, None]
        positions = (t - starts)[:, None]
        mask = (torch.arange(t + 1)[None, :] >= starts[:, None])[:, None, None, :]
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        self.cache.t = t + 1
        sampled = self._sample(logits, self.params, self.generators)
        results: dict[str, Sampled | Exception] = {}
        for row, key in enumerate(self.keys):
            outcome = sampled[row]
            results[key] = outcome
            if not isinstance(outcome, Exception):
                self.last_tokens[row] = outcome.token_id
        return results

    def _sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> list[Sampled | Exception]:
        """Sample one token per row, vectorized over the batch.

        Every random draw comes from the row's own generator (one uniform number per row and
        step), and all other arithmetic is row-wise, so a seeded sequence samples the same
        tokens whatever else is in the batch.
        """
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        sampled_rows = [row for row, param in enumerate(params) if not param.greedy]
        if len(sampled_rows) < len(params):
            tokens = logits.argmax(dim=-1)
        else:
            tokens = torch.zeros(len(params), dtype=torch.long, device=logits.device)
        failed: dict[int, Exception] = {}
        if sampled_rows:
            for row, outcome in zip(
                sampled_rows, _sample_rows(logits, sampled_rows, params, generators), strict=True
            ):
                if isinstance(outcome, Exception):
                    failed[row] = outcome
                else:
                    tokens[row] = outcome
        chosen = tokens.tolist()
        chosen_logprobs = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
        top: list[tuple[tuple[int, float], ...]] = [()] * len(params)
        wanted = max((param.top_logprobs for param in params), default=0)
        if wanted > 0:
            values, indices = torch.topk(logprobs, min(wanted, logprobs.shape[-1]), dim=-1)
            values_l, indices_l = values.tolist(), indices.tolist()
            for row, param in enumerate(params):
                if param.top_logprobs:
                    count = param.top_logprobs
                    top[row] = tuple(
                        (int(i), float(v))
                        for i, v in zip(indices_l[row][:count], values_l[row][:count], strict=True)
                    )
        return [
            failed[row]
            if row in failed
            else Sampled(token_id=int(chosen[row]), logprob=float(chosen_logprobs[row]), top=top[row])
            for row in range(len(params))
        ]

    @torch.inference_mode()
    def remove(self, keys: Sequence[str]) -> None:
        drop = set(keys)
        if not drop:
            return
        row = 0
        while row < len(self.keys):
            if self.keys[row] in drop:
                last = len(self.keys) - 1
                if row != last:
                    # Keep active rows contiguous: move the last row into the hole.
                    self.cache.move_row(last, row)
                    for attr in ("keys", "starts", "last_tokens", "params", "generators"):
                        values = getattr(self, attr)
                        values[row] = values[last]
                for attr in ("keys", "starts", "last_tokens", "params", "generators"):
                    getattr(self, attr).pop()
            else:
                row += 1
        if not self.keys:
            self.cache.t = 0

    @torch.inference_mode()
    def warmup(self) -> None:
        params = SamplingParams(max_new_tokens=4, temperature=0.0)
        self.add(["__warmup__"], [[1, 2, 3, 4]], [params])
        for _ in range(3):
            self.step()
        self.remove(["__warmup__"])

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _prompt_logprobs(logits: torch.Tensor, ids: torch.Tensor, pad: int) -> tuple[float | None, ...]:
    """log p(token i | tokens before it) for a prompt row (left-padded by ``pad``); the first
    token has none. Computed in slices: a long prompt's full log-softmax would be large."""
    values: list[float | None] = [None]
    width = logits.shape[0]
    for start in range(pad, width - 1, 256):
        stop = min(width - 1, start + 256)
        block = torch.log_softmax(logits[start:stop].float(), dim=-1)
        targets = ids[start + 1 : stop + 1].to(block.device)
        values += block.gather(1, targets[:, None])[:, 0].tolist()
    return tuple(values)


_TOP_P_WINDOW = 1024  # nucleus search starts in the top 1024 tokens (exact: falls back to a full sort)


def _sample_rows(
    logits: torch.Tensor,
    rows: list[int],
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int | Exception]:
    """Inverse-CDF sampling with temperature, top-k and top-p for the given rows, vectorized.

    Rows without truncation sample from the cumulative sum in vocabulary order (no sort).
    Truncated rows work in their top-``window`` tokens (``topk`` is sorted); a top-p row whose
    nucleus does not fit in that window is redone with a full sort, so the result is exact.
    """
    device = logits.device
    vocab = logits.shape[-1]
    temperature = torch.tensor([max(params[r].temperature, 1e-5) for r in rows], device=device)
    # Unnormalized probabilities exp((x - max) / T): sampling by inverse CDF needs no division
    # by their sum (the draw is scaled by each row's total instead).
    # Works in place on ``logits`` (the caller's copy) when every row is sampled.
    scaled = logits[rows] if len(rows) < logits.shape[0] else logits
    scaled.sub_(scaled.amax(dim=-1, keepdim=True)).div_(temperature[:, None]).exp_()
    probs = scaled
    draws = torch.cat([torch.rand(1, generator=generators[r], device=device) for r in rows])
    top_k = torch.tensor([params[r].top_k if 0 < params[r].top_k < vocab else 0 for r in rows], device=device)
    top_p = torch.tensor([min(params[r].top_p, 1.0) for r in rows], device=device)
    tokens = torch.zeros(len(rows), dtype=torch.long, device=device)

    total = torch.ones(len(rows), device=device)  # probability mass sampled from, per row
    plain = ((top_k == 0) & (top_p >= 1.0)).nonzero()[:, 0]
    if plain.numel():
        weights = probs if plain.numel() == len(rows) else probs[plain].contiguous()
        picks, total[plain] = _inverse_cdf(weights, draws[plain])
        tokens[plain] = picks

    truncated = ((top_k > 0) | (top_p < 1.0)).nonzero()[:, 0]
    if truncated.numel():
        window = min(vocab, max(int(top_k[truncated].max()), _TOP_P_WINDOW))
        probs_t = probs[truncated]
        probs_t /= probs_t.sum(dim=-1, keepdim=True)  # top-p is a fraction of the whole mass
        values, order = torch.topk(probs_t, window, dim=-1)
        too_narrow = (top_k[truncated] == 0) & (values.sum(dim=-1) < top_p[truncated])
        if window < vocab and bool(too_narrow.any()):
            values, order = torch.sort(probs_t, dim=-1, descending=True)
            window = vocab
        positions = torch.arange(window, device=device)[None, :]
        k = torch.where(top_k[truncated] > 0, top_k[truncated], window)
        keep = positions < k[:, None]
        keep &= (values.cumsum(dim=-1) - values) < top_p[truncated][:, None]  # the first token always stays
        cdf = (values * keep).cumsum(dim=-1)
        total[truncated] = values.sum(dim=-1)
        picked = torch.searchsorted(cdf, (draws[truncated] * cdf[:, -1])[:, None], right=True).clamp(
            max=window - 1
        )
        tokens[truncated] = order.gather(1, picked)[:, 0]

    # NaN or infinite logits make the row's total mass non-finite (cheaper than scanning probs).
    invalid = (~torch.isfinite(total)).tolist()
    return [
        ValueError("sampling failed: the model produced invalid probabilities") if bad else int(token)
        for token, bad in zip(tokens.tolist(), invalid, strict=True)
    ]


_CDF_BLOCK = 256


def _inverse_cdf(weights: torch.Tensor, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index ``i`` per row with ``cdf[i-1] <= u * total < cdf[i]``, and each row's total.

    A full cumulative sum over a 32k vocabulary is the slowest part of sampling a batch; a
    two-level search (block sums, then one block) touches every weight once, in parallel.
    """
    rows, vocab = weights.shape
    size = _block_size(vocab)
    blocks = -(-vocab // size)
    if blocks * size == vocab:
        padded = weights.view(rows, blocks, size)  # no copy
    else:
        padded = torch.nn.functional.pad(weights, (0, blocks * size - vocab)).view(rows, blocks, size)
    block_cdf = padded.sum(dim=-1).cumsum(dim=-1)
    total = block_cdf[:, -1]
    target = (draws * total)[:, None]
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=blocks - 1)  # [rows, 1]
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    inner = padded.gather(1, block[:, :, None].expand(rows, 1, size))[:, 0].cumsum(dim=-1) + before
    offset = torch.searchsorted(inner, target, right=True).clamp_(max=size - 1)
    index = (block * size + offset)[:, 0].clamp_(max=vocab - 1)
    return index, total


def _block_size(vocab: int) -> int:
    """A block size near 256 that divides the vocabulary (no padding copy), else 256."""
    for size in range(256, 63, -1):
        if vocab % size == 0:
            return size
    return _CDF_BLOCK


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
