"""The prefix cache of the local torch backend: KV of full prompt blocks (``block_size``
tokens) keyed by the exact token prefix, so a sequence that starts like an earlier one (a
shared system prompt, the same RAG passages, a session's history) copies those columns into
its row of `kv_cache.SlotKVCache` instead of recomputing them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PrefixBlock:
    id: int  # never reused: children are keyed by it, so an evicted parent's stale children never match
    slot: int
    depth: int
    refs: int = 0


@dataclass
class PrefixStats:
    lookups: int = 0  # sequences that asked
    lookup_tokens: int = 0  # prompt tokens they asked about (the most a hit could cover)
    hit_tokens: int = 0  # prompt tokens copied from the cache instead of prefilled
    inserted_blocks: int = 0
    evicted_blocks: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class PrefixCache:
    """KV of token prefixes in fixed-size blocks, shared by every sequence that starts the same.

    A block is identified by (parent block, its ``block_size`` tokens): an exact match of the
    whole prefix, no hash collisions. Sequences hold a reference on the blocks they matched
    or inserted until they end; a block without references stays cached (and matchable) until
    the space is needed, least recently released first, deepest first among blocks released
    together (a child is useless without its parent).
    """

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        block_size: int,
        budget_bytes: int,
    ) -> None:
        self.block_size = block_size
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        element = torch.empty((), dtype=dtype).element_size()
        self.block_bytes = 2 * layers * kv_heads * block_size * head_dim * element
        self.capacity = max(0, budget_bytes // self.block_bytes)
        self.keys: list[torch.Tensor] = []  # per layer [capacity, kv_heads, block_size, head_dim]
        self.values: list[torch.Tensor] = []
        self._index: dict[tuple[int, tuple[int, ...]], PrefixBlock] = {}
        self._key_of: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._free_slots: list[int] = []
        self._unused: OrderedDict[int, PrefixBlock] = OrderedDict()  # refs == 0, eviction order
        self._next_id = 1
        self.stats = PrefixStats()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def blocks_used(self) -> int:
        return len(self._key_of)

    def clear(self) -> None:
        """Forget every unreferenced block and the statistics (after the warm-up)."""
        for block_id in list(self._unused):
            self._evict(block_id)
        self.stats = PrefixStats()

    def _evict(self, block_id: int) -> int:
        block = self._unused.pop(block_id)
        del self._index[self._key_of.pop(block_id)]
        self._free_slots.append(block.slot)
        return block.slot

    def allocate(self) -> None:
        """Allocate the whole budget now (the warm-up), not on a request's path."""
        self._ensure_storage()

    def _ensure_storage(self) -> None:
        if self.keys or not self.enabled:
            return
        shape = (self.capacity, self.kv_heads, self.block_size, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self._free_slots = list(range(self.capacity - 1, -1, -1))

    def _blocks_of(self, ids: Sequence[int], limit: int) -> list[tuple[int, ...]]:
        size = self.block_size
        return [tuple(ids[i : i + size]) for i in range(0, limit - limit % size, size)]

    def match(self, ids: Sequence[int], limit: int) -> list[PrefixBlock]:
        """The cached blocks that cover the longest block-aligned prefix of ``ids[:limit]``,
        referenced for the caller (release them with `release`)."""
        if not self.enabled:
            return []
        self.stats.lookups += 1
        self.stats.lookup_tokens += limit
        found: list[PrefixBlock] = []
        parent = 0
        for tokens in self._blocks_of(ids, limit):
            block = self._index.get((parent, tokens))
            if block is None:
                break
            found.append(block)
            parent = block.id
        for block in found:
            self._acquire(block)
        self.stats.hit_tokens += len(found) * self.block_size
        return found

    def _acquire(self, block: PrefixBlock) -> None:
        if block.refs == 0:
            self._unused.pop(block.id, None)
        block.refs += 1

    def release(self, blocks: Sequence[PrefixBlock]) -> None:
        # Deepest first into the eviction order: a chain is evicted from its tail.
        for block in reversed(blocks):
            block.refs -= 1
            if block.refs == 0 and block.id in self._key_of:
                self._unused[block.id] = block

    def extend(
        self,
        held: list[PrefixBlock],
        ids: Sequence[int],
        limit: int,
        row_keys: list[torch.Tensor],
        row_values: list[torch.Tensor],
    ) -> None:
        """Cache the full blocks of ``ids[:limit]`` beyond the ``held`` ones (whose KV is in
        the given per-layer ``[kv_heads, columns, head_dim]`` row views), and hold them."""
        if not self.enabled:
            return
        blocks = self._blocks_of(ids, limit)
        parent = held[-1].id if held else 0
        for depth in range(len(held), len(blocks)):
            tokens = blocks[depth]
            block = self._index.get((parent, tokens))
            if block is None:
                slot = self._take_slot()
                if slot is None:
                    return  # every block is in use: nothing more can be cached now
                block = PrefixBlock(id=self._next_id, slot=slot, depth=depth)
                self._next_id += 1
                key = (parent, tokens)
                self._index[key] = block
                self._key_of[block.id] = key
                lo = depth * self.block_size
                for layer in range(self.layers):
                    self.keys[layer][slot].copy_(row_keys[layer][:, lo : lo + self.block_size])
                    self.values[layer][slot].copy_(row_values[layer][:, lo : lo + self.block_size])
                self.stats.inserted_blocks += 1
            self._acquire(block)
            held.append(block)
            parent = block.id

    def _take_slot(self) -> int | None:
        self._ensure_storage()
        if self._free_slots:
            return self._free_slots.pop()
        if not self._unused:
            return None
        self._evict(next(iter(self._unused)))
        self.stats.evicted_blocks += 1
        return self._free_slots.pop()

    def copy_into(
        self, blocks: Sequence[PrefixBlock], row_keys: list[torch.Tensor], row_values: list[torch.Tensor]
    ) -> None:
        """Write the blocks' KV into a row's first ``len(blocks) * block_size`` columns."""
        if not blocks:
            return
        slots = torch.tensor([block.slot for block in blocks], dtype=torch.long, device=self.device)
        width = len(blocks) * self.block_size
        for layer in range(self.layers):
            for pool, row in ((self.keys[layer], row_keys[layer]), (self.values[layer], row_values[layer])):
                # [n, kv, size, d] -> [kv, n * size, d]
                gathered = (
                    pool.index_select(0, slots).transpose(0, 1).reshape(self.kv_heads, width, self.head_dim)
                )
                row[:, :width].copy_(gathered)

    def refs(self, ids: Sequence[int]) -> list[int]:
        """References held on each cached block of ``ids`` (tests and diagnostics)."""
        out: list[int] = []
        parent = 0
        for tokens in self._blocks_of(ids, len(ids)):
            block = self._index.get((parent, tokens))
            if block is None:
                break
            out.append(block.refs)
            parent = block.id
        return out
