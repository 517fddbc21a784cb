"""Key/value storage for the local torch backend: per-row slots and packed steps.

One forward pass per engine step carries every token the step computes, packed into a single
row of the model's input (``[1, T]``): the decode token of each running sequence, then prefill
chunks of sequences still reading their prompt. The linear layers see ``T`` tokens however
they are split between sequences; only attention needs to know which token belongs to which
sequence, so the backend installs its own attention function (`packed_attention`) that reads
a `StepPlan`:

- decode tokens attend, batched, over their rows of `SlotKVCache` (a zero-copy view of rows
  ``[0, n)``; rows that are not decoding this step get a zero query whose output is dropped),
  in `decode_attention`: two batched GEMMs, not torch's SDPA (see there why);
- each prefill chunk attends over its own row, causally, from column 0 to its end.

The prefix cache, whose blocks are copied into these rows, is `prefix_cache.PrefixCache`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from inference.backends import native

#: Name under which `packed_attention` is registered with transformers.
ATTENTION_NAME = "sluice_packed"
#: Decode attention reads every column of the cache while that is at most this many times the
#: columns it needs (half-precision caches; see `StepPlan.attention_width`).
FULL_WIDTH_RATIO = 2.0


@dataclass
class Chunk:
    """Prompt tokens ``[start, start + length)`` of the sequence in ``row``, at ``offset`` in
    the packed input."""

    row: int
    start: int
    length: int
    offset: int


@dataclass
class StepPlan:
    """Where each packed token of one forward pass reads and writes its keys/values."""

    cache: SlotKVCache
    #: Decode tokens come first in the packed input: their rows and positions (= the column
    #: their key/value is written to).
    decode_rows: list[int] = field(default_factory=list)
    decode_positions: list[int] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    #: The native kernel's module (native/attention.cpp): the decode tokens attend in one call
    #: of it, over exactly their rows' columns, instead of the batched GEMMs. None: those.
    #: Prefill chunks stay on SDPA either way (its tiles beat the kernel's one query at a time:
    #: 1473 against 351 ms to prefill one 512-token prompt, bench/attention.py).
    kernel: Any = None
    # Tensors derived once per step (not per layer).
    _rows_t: torch.Tensor | None = None
    _cols_t: torch.Tensor | None = None
    _bias: torch.Tensor | None = None
    _chunk_masks: dict[int, torch.Tensor | None] = field(default_factory=dict)
    _token_lengths: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        return len(self.decode_rows) + sum(chunk.length for chunk in self.chunks)

    def prepare(self, device: torch.device) -> None:
        if self.decode_rows:
            # Where `SlotKVCache.update` writes each decode token's key/value.
            self._rows_t = torch.tensor(self.decode_rows, dtype=torch.long, device=device)
            self._cols_t = torch.tensor(self.decode_positions, dtype=torch.long, device=device)
        if self.kernel is not None and self.decode_rows:
            # The columns each decode token sees: its row's whole history, its own included.
            self._token_lengths = torch.tensor([p + 1 for p in self.decode_positions], dtype=torch.long)
        elif self.decode_rows:
            rows = self.decode_span
            width = self.attention_width(max(self.decode_positions) + 1)
            limit = torch.zeros(rows, dtype=torch.long)  # rows not decoding see column 0 only
            limit[torch.tensor(self.decode_rows)] = torch.tensor(self.decode_positions)
            visible = torch.arange(width)[None, :] <= limit[:, None]
            # Added to the scores of `decode_attention`: 0 where a row attends, -inf elsewhere.
            self._bias = (
                torch.zeros(rows, width).masked_fill_(~visible, float("-inf"))[:, None, None, :].to(device)
            )
        for i, chunk in enumerate(self.chunks):
            if chunk.start == 0:
                self._chunk_masks[i] = None  # plain causal
            else:
                q = torch.arange(chunk.length)[:, None] + chunk.start
                self._chunk_masks[i] = (torch.arange(chunk.start + chunk.length)[None, :] <= q)[
                    None, None
                ].to(device)

    def attention_width(self, needed: int) -> int:
        """Columns the batched decode attention reads: the ``needed`` ones, or every column
        of the cache when that costs less.

        torch's bfloat16/float16 batched GEMM on the CPU copies an operand that is not
        contiguous first, and ``keys[:span, :, :needed]`` is not (each row's used columns
        are a slice of its capacity): that copy was 44% of a bfloat16 decode step at batch 64
        (``aten::copy_`` of K and V, twice per layer, in a torch profile of the bench's ~110M
        Llama). Rows ``[0, span)`` over the full capacity are contiguous, so no copy; the
        columns past a row's length are masked by the bias, and the GEMM reads them at about
        half the cost of copying one (measured: copy + GEMM of 90 columns 27 ms a step, GEMM of
        256 columns 38 ms). Columns grow by doubling, so the full width is at most 2x the
        needed one unless long sequences left the cache wide: then the slice is cheaper. In
        float32 the GEMM takes strided operands without a copy: always the slice. So do CUDA's
        strided-batched GEMMs, in every dtype: the rule is the CPU's only."""
        capacity = self.cache.col_capacity
        on_cpu = torch.device(self.cache.device).type == "cpu"
        if on_cpu and self.cache.dtype != torch.float32 and capacity <= FULL_WIDTH_RATIO * needed:
            return capacity
        return needed

    @property
    def decode_span(self) -> int:
        """Rows ``[0, span)`` the batched decode attention runs over."""
        return max(self.decode_rows) + 1 if self.decode_rows else 0

    @property
    def decode_dense(self) -> bool:
        return self.decode_rows == list(range(len(self.decode_rows)))


_current = threading.local()


class SlotKVCache:
    """Keys/values of shape ``[rows, kv_heads, columns, head_dim]`` per layer.

    A row is a sequence; its valid columns are ``[0, length)`` (left-aligned, positions are
    columns). Implements what transformers' decoder layers call (``update``,
    ``get_seq_length``); writes follow the current `StepPlan`.
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
        self.plan: StepPlan | None = None

    def _alloc(self, rows: int, cols: int) -> torch.Tensor:
        return torch.zeros(rows, self.kv_heads, cols, self.head_dim, dtype=self.dtype, device=self.device)

    @property
    def row_capacity(self) -> int:
        return self.keys[0].shape[0]

    @property
    def col_capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def bytes_per_position(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.keys[0].element_size()

    # -- transformers cache interface --
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.plan
        assert plan is not None, "the cache is written only inside a planned step"
        n = len(plan.decode_rows)
        for store, states in ((self.keys[layer_idx], key_states), (self.values[layer_idx], value_states)):
            if n:
                assert plan._rows_t is not None and plan._cols_t is not None
                # [kv, n, d] -> [n, kv, d]: one column per decoding row.
                store[plan._rows_t, :, plan._cols_t] = states[0, :, :n].transpose(0, 1)
            for chunk in plan.chunks:
                end = chunk.start + chunk.length
                store[chunk.row, :, chunk.start : end].copy_(
                    states[0, :, chunk.offset : chunk.offset + chunk.length]
                )
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    # -- capacity and rows --
    def resize(self, rows: int, cols: int, lengths: Sequence[int]) -> None:
        """New buffers of ``rows`` x ``cols``, keeping row ``i``'s first ``lengths[i]`` columns."""
        used = len(lengths)
        keep = min(max(lengths, default=0), cols)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = self._alloc(rows, cols)
                if used and keep:
                    new[:used, :, :keep].copy_(old[:used, :, :keep])
                store[i] = new

    def move_row(self, src: int, dst: int, length: int) -> None:
        for store in (self.keys, self.values):
            for buf in store:
                buf[dst, :, :length].copy_(buf[src, :, :length])


def packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for a packed step (see the module docstring); ``key``/``value`` are the
    step's own new states, already written to the cache by ``SlotKVCache.update``."""
    plan: StepPlan | None = getattr(_current, "plan", None)
    if plan is None:
        # The model called outside a planned step (a reference run, a plain HF cache).
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    layer = module.layer_idx
    cache = plan.cache
    keys, values = cache.keys[layer], cache.values[layer]
    heads, total, head_dim = query.shape[1], query.shape[2], query.shape[3]
    gqa = heads != keys.shape[1]
    out = query.new_empty(1, total, heads, head_dim)
    q = query[0]  # [heads, T, d]
    n = len(plan.decode_rows)
    if n and plan.kernel is not None:
        assert plan._rows_t is not None and plan._token_lengths is not None
        out[0, :n] = native.slot_attention(
            plan.kernel,
            q[:, :n].transpose(0, 1),  # [n, heads, d]
            keys,
            values,
            plan._rows_t,
            plan._token_lengths,
            scaling if scaling is not None else head_dim**-0.5,
        )
    elif n:
        assert plan._bias is not None and plan._rows_t is not None
        width = plan._bias.shape[-1]
        span = plan.decode_span
        q_dec = q[:, :n].transpose(0, 1)[:, :, None, :]  # [n, heads, 1, d]
        if not plan.decode_dense:
            full = q_dec.new_zeros(span, heads, 1, head_dim)
            full[plan._rows_t] = q_dec
            q_dec = full
        attended = decode_attention(
            q_dec, keys[:span, :, :width], values[:span, :, :width], plan._bias, scaling
        )  # [span, heads, 1, d]
        if not plan.decode_dense:
            attended = attended[plan._rows_t]
        out[0, :n] = attended[:, :, 0]
    for i, chunk in enumerate(plan.chunks):
        end = chunk.start + chunk.length
        q_chunk = q[None, :, chunk.offset : chunk.offset + chunk.length]
        mask = plan._chunk_masks[i]
        attended = F.scaled_dot_product_attention(
            q_chunk,
            keys[chunk.row : chunk.row + 1, :, :end],
            values[chunk.row : chunk.row + 1, :, :end],
            attn_mask=mask,
            is_causal=mask is None,
            scale=scaling,
            enable_gqa=gqa,
        )  # [1, heads, length, d]
        out[0, chunk.offset : chunk.offset + chunk.length] = attended[0].transpose(0, 1)
    return out, None


def decode_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    scaling: float | None,
) -> torch.Tensor:
    """One query token per row (``[rows, heads, 1, d]``) over ``keys``/``values``
    (``[rows, kv_heads, width, d]``), ``bias`` (float32 ``[rows, 1, 1, width]``) added to the
    scores: transformers' eager attention, in a few batched ops.

    Not `F.scaled_dot_product_attention`: on the CPU it runs its flash kernel, which tiles
    for long queries; with one query token per row it spent 1.7 ms a layer at batch 16 in
    bfloat16 (41% of the whole decode step, profiled on the bench's ~110M Llama), against 0.4 ms
    for these two batched GEMMs. The scores are scaled, masked and softmaxed in float32 (eager
    attention softmaxes in float32 too); grouped-query heads are a view of the query (head ``h`` reads
    key/value head ``h // group``, as transformers' ``repeat_kv`` lays them out), not a copy of
    the keys."""
    rows, heads, _, head_dim = query.shape
    kv_heads = keys.shape[1]
    q = query.view(rows, kv_heads, heads // kv_heads, head_dim)
    # K q^T, transposed, rather than q K^T: the same products, but the CPU's bf16 batched GEMM
    # copies a transposed operand first (1.0 vs 0.6 ms a layer at 16 rows).
    dots = torch.matmul(keys, q.transpose(-1, -2)).transpose(-1, -2)  # [rows, kv_heads, group, width]
    scores = torch.add(bias, dots, alpha=scaling or head_dim**-0.5)
    probs = torch.softmax(scores, dim=-1).to(values.dtype)  # [rows, kv_heads, group, width]
    return torch.matmul(probs, values).view(rows, heads, 1, head_dim)


@contextlib.contextmanager
def planned(plan: StepPlan) -> Iterator[StepPlan]:
    """Make ``plan`` the one `packed_attention` and the cache follow during a forward pass."""
    plan.cache.plan = plan
    _current.plan = plan
    try:
        yield plan
    finally:
        plan.cache.plan = None
        _current.plan = None


def register_attention() -> str:
    # lazy, as sdpa_attention above: transformers takes seconds to import, the cache needs none
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    return ATTENTION_NAME
