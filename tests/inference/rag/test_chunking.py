"""Token chunking with overlap, on the embedding model's own tokenizer."""

from __future__ import annotations

import itertools

from inference.rag.chunking import chunk_text
from inference.rag.services import embedding_offsets


def words(n: int) -> str:
    return " ".join(f"word{i}" for i in range(n))


def test_chunks_cover_the_text_with_the_requested_overlap() -> None:
    text = words(400)
    chunks = chunk_text(text, embedding_offsets, size=60, overlap=10)
    assert len(chunks) > 5
    assert all(c.token_count <= 60 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # Each chunk is a span of the original text, and consecutive chunks overlap.
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end].strip() == chunk.text
    for before, after in itertools.pairwise(chunks):
        assert after.char_start < before.char_end
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)


def test_prefers_sentence_boundaries() -> None:
    sentence = "The quick brown fox jumps over the lazy dog. "
    chunks = chunk_text(sentence * 40, embedding_offsets, size=50, overlap=0)
    assert all(c.text.endswith(".") for c in chunks[:-1])


def test_short_text_is_one_chunk_and_empty_text_none() -> None:
    assert [c.text for c in chunk_text("Just one line.", embedding_offsets)] == ["Just one line."]
    assert chunk_text("", embedding_offsets) == []
