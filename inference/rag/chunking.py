"""Split text into overlapping chunks measured in the embedding model's tokens.

A chunk is a span of the original text (character offsets from the tokenizer), so what is
stored, shown and cited is the author's text, not a detokenised approximation. Boundaries
prefer the end of a sentence or line within the last quarter of a chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# (start, end) character offsets of each token of a text.
Offsets = Callable[[str], Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class TextChunk:
    index: int
    text: str
    token_count: int
    char_start: int
    char_end: int


def _good_break(text: str, offsets: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """The token index to end a chunk at: after a sentence end or a newline if one falls in
    the last quarter of [start, end), else ``end``."""
    floor = start + max(1, (end - start) * 3 // 4)
    for i in range(end - 1, floor - 1, -1):
        token_end = offsets[i][1]
        tail = text[token_end : token_end + 1]
        if text[token_end - 1 : token_end] in ".!?" and (tail in (" ", "\n", "")):
            return i + 1
        if tail == "\n":
            return i + 1
    return end


def chunk_text(text: str, offsets: Offsets, *, size: int = 200, overlap: int = 40) -> list[TextChunk]:
    if size < 8 or not 0 <= overlap < size // 2:
        raise ValueError("need size >= 8 and 0 <= overlap < size / 2")
    spans = [span for span in offsets(text) if span[1] > span[0]]
    chunks: list[TextChunk] = []
    start = 0
    while start < len(spans):
        end = min(len(spans), start + size)
        if end < len(spans):
            end = _good_break(text, spans, start, end)
        char_start, char_end = spans[start][0], spans[end - 1][1]
        piece = text[char_start:char_end].strip()
        if piece:
            chunks.append(
                TextChunk(
                    index=len(chunks),
                    text=piece,
                    token_count=end - start,
                    char_start=char_start,
                    char_end=char_end,
                )
            )
        if end >= len(spans):
            break
        start = max(start + 1, end - overlap)
    return chunks
