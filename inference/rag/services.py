"""Knowledge-base writes: bases, uploads (re-upload replaces), ingestion, query embeddings.

Ingestion runs in a Celery task on the embeddings queue (`inference.ingest_document`): extract
text, chunk it by embedding tokens with overlap, embed in batches, and show progress on the
document (status, chunks done/total). Any failure ends as a failed document with a readable
error; the worker goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import F
from tokenizers import Tokenizer

from inference.cache import result_cache_invalidate
from inference.core.keys import rpc_key
from inference.core.redis import get_redis
from inference.models import Chunk, Document, DocumentStatus, KnowledgeBase
from inference.rag.chunking import chunk_text
from inference.rag.extract import ExtractionError, content_type_for, extract_text

logger = logging.getLogger(__name__)

EMBED_BATCH = 32
#: The embeddings worker's tasks (inference/tasks.py), looked up by name: the tasks import this module.
INGEST_DOCUMENT_TASK = "inference.ingest_document"
EMBED_BATCH_TASK = "inference.embed_batch"


class EmbeddingUnavailable(Exception):
    """No embeddings worker answered in time."""


# -- knowledge bases -----------------------------------------------------------------------


def knowledge_base_create(
    *,
    owner: User,
    name: str,
    description: str = "",
    visibility: str = "private",
    shared_users: Sequence[User] = (),
    shared_groups: Sequence[Group] = (),
) -> KnowledgeBase:
    with transaction.atomic():
        kb = KnowledgeBase.objects.create(
            owner=owner, name=name, description=description, visibility=visibility
        )
        kb.shared_with_users.set(shared_users)
        kb.shared_with_groups.set(shared_groups)
    return kb


def knowledge_base_update(
    *,
    kb: KnowledgeBase,
    name: str | None = None,
    description: str | None = None,
    visibility: str | None = None,
    shared_users: Sequence[User] | None = None,
    shared_groups: Sequence[Group] | None = None,
) -> KnowledgeBase:
    with transaction.atomic():
        for field, value in (("name", name), ("description", description), ("visibility", visibility)):
            if value is not None:
                setattr(kb, field, value)
        kb.save()
        if shared_users is not None:
            kb.shared_with_users.set(shared_users)
        if shared_groups is not None:
            kb.shared_with_groups.set(shared_groups)
    return kb


def knowledge_base_changed(*, kb_id: Any) -> None:
    """Content changed: bump the version and drop cached answers that used it."""
    KnowledgeBase.objects.filter(id=kb_id).update(version=F("version") + 1)
    result_cache_invalidate(knowledge_base_id=str(kb_id))


def knowledge_base_delete(*, kb: KnowledgeBase) -> None:
    kb_id = kb.id
    kb.delete()  # documents and chunks cascade
    result_cache_invalidate(knowledge_base_id=str(kb_id))


# -- documents -------------------------------------------------------------------------------


def document_upload(*, kb: KnowledgeBase, name: str, raw: bytes, content_type: str | None) -> Document:
    """Store an upload and queue its ingestion. A document with the same name is replaced:
    its chunks go at once, the new content is ingested in their place."""
    resolved = content_type_for(name, content_type)  # ExtractionError: unsupported type
    digest = hashlib.sha256(raw).hexdigest()
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(knowledge_base=kb, name=name).first()
        if document is None:
            document = Document(knowledge_base=kb, name=name)
        else:
            document.revision += 1
            document.chunks.all().delete()
        document.content_type = resolved
        document.size_bytes = len(raw)
        document.sha256 = digest
        document.raw = raw
        document.text = ""
        document.status = DocumentStatus.QUEUED
        document.chunks_total = document.chunks_done = 0
        document.error = ""
        document.save()
        knowledge_base_changed(kb_id=kb.id)
        document_id, revision = str(document.id), document.revision
        transaction.on_commit(lambda: _queue_ingestion(document_id, revision), robust=True)
    return document


def _queue_ingestion(document_id: str, revision: int) -> None:
    current_app.tasks[INGEST_DOCUMENT_TASK].apply_async(
        args=[document_id, revision], queue=settings.SLUICE_EMBEDDING_QUEUE, priority=5
    )


def document_delete(*, document: Document) -> None:
    kb_id = document.knowledge_base_id
    with transaction.atomic():
        Document.objects.filter(id=document.id).delete()
        knowledge_base_changed(kb_id=kb_id)


class _Stale(Exception):
    """The document was replaced or deleted while this ingestion ran."""


def _lock(document_id: str, revision: int) -> bool:
    """Lock the document row (inside a transaction) if it is still at this revision."""
    return bool(
        list(Document.objects.select_for_update().filter(id=document_id, revision=revision).values_list("id"))
    )


def _fenced_update(document_id: str, revision: int, **fields: Any) -> None:
    if not Document.objects.filter(id=document_id, revision=revision).update(**fields):
        raise _Stale


def document_ingest(*, document_id: str, revision: int) -> str:
    """Extract, chunk, embed, store. Returns the final status. Never raises for a bad document."""
    document = Document.objects.filter(id=document_id).first()
    if document is None or document.revision != revision:
        return "stale"
    if document.status == DocumentStatus.READY:
        return DocumentStatus.READY  # a redelivered message: nothing to do
    try:
        _ingest(document, revision)
    except _Stale:
        logger.info("document %s was replaced or deleted during ingestion", document_id)
        return "stale"
    except ExtractionError as exc:
        _fail(document_id, revision, str(exc))
        return DocumentStatus.FAILED
    except Exception as exc:
        logger.exception("ingestion of document %s failed", document_id)
        _fail(document_id, revision, f"ingestion failed: {exc.__class__.__name__}: {exc}")
        return DocumentStatus.FAILED
    return DocumentStatus.READY


def _fail(document_id: str, revision: int, error: str) -> None:
    Document.objects.filter(id=document_id, revision=revision).update(
        status=DocumentStatus.FAILED, error=error[:2000]
    )


def _ingest(document: Document, revision: int) -> None:
    document_id = str(document.id)
    with transaction.atomic():
        if not _lock(document_id, revision):
            raise _Stale
        Chunk.objects.filter(document_id=document_id).delete()  # a crashed earlier attempt's
        _fenced_update(document_id, revision, status=DocumentStatus.PROCESSING, chunks_done=0, error="")
    text = extract_text(bytes(document.raw or b""), document.content_type)
    pieces = chunk_text(
        text, embedding_offsets, size=settings.SLUICE_CHUNK_TOKENS, overlap=settings.SLUICE_CHUNK_OVERLAP
    )
    _fenced_update(document_id, revision, text=text, chunks_total=len(pieces))
    embedder = local_embedder()
    for start in range(0, len(pieces), EMBED_BATCH):
        batch = pieces[start : start + EMBED_BATCH]
        vectors = embedder.embed([piece.text for piece in batch])
        with transaction.atomic():
            # The row lock orders this batch against a concurrent replace or delete.
            if not _lock(document_id, revision):
                raise _Stale
            Chunk.objects.bulk_create(
                [
                    Chunk(
                        document_id=document_id,
                        knowledge_base_id=document.knowledge_base_id,
                        index=piece.index,
                        text=piece.text,
                        token_count=piece.token_count,
                        char_start=piece.char_start,
                        char_end=piece.char_end,
                        embedding=vector.tolist(),
                    )
                    for piece, vector in zip(batch, vectors, strict=True)
                ]
            )
            _fenced_update(document_id, revision, chunks_done=start + len(batch))
    with transaction.atomic():
        _fenced_update(document_id, revision, status=DocumentStatus.READY, raw=None)
        knowledge_base_changed(kb_id=document.knowledge_base_id)


# -- embeddings ------------------------------------------------------------------------------

_tokenizer: Tokenizer | None = None
_tokenizer_lock = threading.Lock()


def _embedding_tokenizer() -> Tokenizer:
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            tokenizer = Tokenizer.from_file(f"{settings.SLUICE_EMBEDDING_MODEL_PATH}/tokenizer.json")
            tokenizer.no_truncation()
            tokenizer.no_padding()
            _tokenizer = tokenizer
        return _tokenizer


def embedding_offsets(text: str) -> list[tuple[int, int]]:
    """Character spans of the embedding model's tokens (chunks are measured in these)."""
    encoding = _embedding_tokenizer().encode(text, add_special_tokens=False)
    return [tuple(span) for span in encoding.offsets]  # type: ignore[misc]


def local_embedder() -> Any:
    """The embedding model in this process (workers only: it imports torch)."""
    # torch only where the embedding model runs: the web never loads it
    from inference.backends.embeddings import get_embedder

    return get_embedder(settings.SLUICE_EMBEDDING_MODEL_PATH, threads=settings.SLUICE_EMBEDDING_THREADS)


@dataclass(frozen=True)
class EmbeddingModelFacts:
    """What the gateway needs to know of the embedding model, read from its files (no torch)."""

    dimensions: int
    max_tokens: int

    def count(self, text: str) -> int:
        """Tokens the model reads for ``text`` (with [CLS]/[SEP], cut at its window)."""
        encoding = _embedding_tokenizer().encode(text, add_special_tokens=True)
        return min(len(encoding.ids), self.max_tokens)

    @property
    def vocab_size(self) -> int:
        return int(_embedding_tokenizer().get_vocab_size())


_facts: EmbeddingModelFacts | None = None


def embedding_model_facts() -> EmbeddingModelFacts:
    global _facts
    if _facts is None:
        root = Path(settings.SLUICE_EMBEDDING_MODEL_PATH)

        def read(name: str) -> dict[str, Any]:
            try:
                data = json.loads((root / name).read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}

        pooling = read("1_Pooling/config.json")
        config = read("config.json")
        dimensions = int(pooling.get("word_embedding_dimension") or config.get("hidden_size") or 0)
        max_tokens = int(
            read("sentence_bert_config.json").get("max_seq_length")
            or config.get("max_position_embeddings")
            or 512
        )
        _facts = EmbeddingModelFacts(dimensions=dimensions, max_tokens=max_tokens)
    return _facts


def embed_remote(
    inputs: Sequence[str | Sequence[int]], *, timeout_s: float | None = None
) -> list[list[float]]:
    """Embed texts (or token ids of the embedding model) on an embeddings worker: one task on
    the embeddings queue for the batch, the answer pushed to a Redis list this call blocks on."""
    timeout = timeout_s if timeout_s is not None else settings.SLUICE_EMBEDDING_RPC_TIMEOUT_S
    rpc_id = uuid.uuid4().hex
    payload = [item if isinstance(item, str) else [int(i) for i in item] for item in inputs]
    current_app.tasks[EMBED_BATCH_TASK].apply_async(
        args=[rpc_id, payload], queue=settings.SLUICE_EMBEDDING_QUEUE, priority=0, expires=timeout
    )
    reply: Any = get_redis().blpop([rpc_key(rpc_id)], timeout=timeout)
    if reply is None:
        raise EmbeddingUnavailable(f"no embeddings worker answered within {timeout:.0f}s")
    vectors = json.loads(reply[1])
    if isinstance(vectors, dict):  # the worker could not embed this input
        raise ValueError(str(vectors.get("error") or "embedding failed"))
    return [[float(x) for x in vector] for vector in vectors]


def embed_batch_answer(*, rpc_id: str, inputs: list[Any]) -> None:
    embedder = local_embedder()
    try:
        texts = [item for item in inputs if isinstance(item, str)]
        id_lists = [item for item in inputs if not isinstance(item, str)]
        by_text = iter(embedder.embed(texts)) if texts else iter(())
        by_ids = (
            iter(embedder.embed_ids(id_lists, max_tokens=embedding_model_facts().max_tokens))
            if id_lists
            else iter(())
        )
        vectors = [next(by_text) if isinstance(item, str) else next(by_ids) for item in inputs]
        answer: Any = [[round(float(x), 7) for x in vector] for vector in vectors]
    except Exception as exc:  # a bad input fails this request, not the worker
        logger.warning("embedding batch %s failed", rpc_id, exc_info=True)
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    client = get_redis()
    pipe = client.pipeline()
    pipe.rpush(rpc_key(rpc_id), json.dumps(answer))
    pipe.expire(rpc_key(rpc_id), 60)
    pipe.execute()


def embed_query_remote(text: str, *, timeout_s: float | None = None) -> list[float]:
    """A knowledge-base query's vector, from an embeddings worker (web processes do not load
    torch)."""
    return embed_remote([text], timeout_s=timeout_s)[0]
