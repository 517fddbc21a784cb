"""Ingestion and retrieval on real Postgres + pgvector with real all-MiniLM-L6-v2 embeddings,
run in this process (the Celery task calls the same service).

The labelled set (tests/data/rag_eval.json, from tests/support/make_rag_eval.py): 225 chunks,
75 questions, each with the document that answers it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from inference.cache import result_cache_get, result_cache_put
from inference.models import CachedResult, Chunk, Document, DocumentStatus, KnowledgeBase
from inference.rag.selectors import chunks_search
from inference.rag.services import (
    document_delete,
    document_ingest,
    document_upload,
    knowledge_base_create,
    knowledge_base_delete,
    local_embedder,
)

EVAL = json.loads((Path(__file__).resolve().parents[2] / "data" / "rag_eval.json").read_text())

# `db` (one transaction per test, rolled back): on_commit never fires, so no ingestion task is
# queued for another worker; the tests run the ingestion themselves.
pytestmark = pytest.mark.django_db


@pytest.fixture
def kb() -> KnowledgeBase:
    owner = User.objects.create(username="librarian")
    return knowledge_base_create(owner=owner, name="towns")


def upload(kb: KnowledgeBase, name: str, text: str | bytes, content_type: str = "text/plain") -> Document:
    raw = text.encode() if isinstance(text, str) else text
    document = document_upload(kb=kb, name=name, raw=raw, content_type=content_type)
    document_ingest(document_id=str(document.id), revision=document.revision)
    document.refresh_from_db()
    return document


@pytest.mark.slow
def test_recall_at_5_on_the_labelled_set(kb: KnowledgeBase) -> None:
    for doc in EVAL["documents"]:
        document = upload(kb, doc["name"], doc["text"])
        assert document.status == DocumentStatus.READY, document.error
    assert Chunk.objects.filter(knowledge_base=kb).count() == len(EVAL["documents"]) >= 200
    questions = EVAL["questions"]
    assert len(questions) >= 50
    vectors = local_embedder().embed([q["question"] for q in questions])
    at1 = at5 = 0
    for question, vector in zip(questions, vectors, strict=True):
        hits = chunks_search(kb_ids=[kb.id], embedding=vector, top_k=5)
        names = [hit.document for hit in hits]
        at5 += question["document"] in names
        at1 += names[:1] == [question["document"]]
    recall5, recall1 = at5 / len(questions), at1 / len(questions)
    print(f"\nretrieval on {len(questions)} questions / {len(EVAL['documents'])} chunks: "
          f"recall@5 = {recall5:.3f}, recall@1 = {recall1:.3f}")  # fmt: skip
    assert recall5 >= 0.9


def test_ingestion_shows_progress_and_chunks_long_documents(kb: KnowledgeBase, settings: object) -> None:
    settings.SLUICE_CHUNK_TOKENS = 40  # type: ignore[attr-defined]
    settings.SLUICE_CHUNK_OVERLAP = 8  # type: ignore[attr-defined]
    text = " ".join(doc["text"] for doc in EVAL["documents"][:6])
    document = upload(kb, "long.txt", text)
    assert document.status == DocumentStatus.READY and document.error == ""
    assert document.chunks_total == document.chunks_done > 5
    chunks = list(document.chunks.order_by("index"))
    assert [c.index for c in chunks] == list(range(document.chunks_total))
    assert all(c.token_count <= 40 and c.text in text for c in chunks)
    assert document.raw is None  # the upload is not kept once ingested


@pytest.mark.parametrize(
    ("raw", "content_type", "error"),
    [
        (b"", "text/plain", "no text"),
        (b"%PDF-1.7 garbage", "application/pdf", "PDF"),
        (b"\x00\x00", "text/plain", "binary"),
    ],
)
def test_bad_documents_fail_with_a_clear_error(
    kb: KnowledgeBase, raw: bytes, content_type: str, error: str
) -> None:
    document = upload(kb, "bad", raw, content_type)
    assert document.status == DocumentStatus.FAILED and error in document.error
    assert document.chunks.count() == 0


def test_reupload_replaces_and_a_stale_ingestion_stops(kb: KnowledgeBase) -> None:
    first = upload(kb, "notes.md", "Belcrag exports saddle leather.", "text/markdown")
    old_revision = first.revision
    replaced = document_upload(
        kb=kb, name="notes.md", raw=b"Belcrag now exports glass beads.", content_type=None
    )
    assert replaced.id == first.id and replaced.revision == old_revision + 1
    assert replaced.chunks.count() == 0  # the old chunks went with the old content
    assert document_ingest(document_id=str(first.id), revision=old_revision) == "stale"
    document_ingest(document_id=str(first.id), revision=replaced.revision)
    assert [c.text for c in Chunk.objects.filter(document=first)] == ["Belcrag now exports glass beads."]
    assert Document.objects.filter(knowledge_base=kb).count() == 1


def test_deletes_cascade_and_invalidate_cached_answers(kb: KnowledgeBase) -> None:
    document = upload(kb, "a.txt", "Some fact about Esktown.")
    user = kb.owner
    result_cache_put(
        user_id=user.pk, key="k1", model="m", output_text="x", finish_reason="eos", prompt_tokens=1,
        completion_tokens=1, knowledge_base_ids=[str(kb.id)], citations=[],
    )  # fmt: skip
    result_cache_put(
        user_id=user.pk, key="k2", model="m", output_text="y", finish_reason="eos", prompt_tokens=1,
        completion_tokens=1, knowledge_base_ids=[], citations=[],
    )  # fmt: skip
    version = KnowledgeBase.objects.get(id=kb.id).version
    document_delete(document=document)
    assert Chunk.objects.filter(knowledge_base=kb).count() == 0
    assert KnowledgeBase.objects.get(id=kb.id).version == version + 1
    assert result_cache_get(user_id=user.pk, key="k1") is None  # used the changed base
    assert result_cache_get(user_id=user.pk, key="k2") is not None
    upload(kb, "b.txt", "Another fact.")
    knowledge_base_delete(kb=kb)
    assert not Document.objects.exists() and not Chunk.objects.exists()
    assert CachedResult.objects.filter(key="k2").exists()


def test_exact_and_hnsw_search_agree_on_a_small_set(kb: KnowledgeBase) -> None:
    for doc in EVAL["documents"][:30]:
        upload(kb, doc["name"], doc["text"])
    vector = local_embedder().embed(["Who founded the town?"])[0]
    approximate = chunks_search(kb_ids=[kb.id], embedding=vector, top_k=5)
    exact = chunks_search(kb_ids=[kb.id], embedding=vector, top_k=5, exact=True)
    assert [h.chunk_id for h in approximate] == [h.chunk_id for h in exact]
    assert all(a.score >= b.score for a, b in itertools.pairwise(exact))
    assert chunks_search(kb_ids=[kb.id], embedding=vector, top_k=5, min_score=0.99) == []
