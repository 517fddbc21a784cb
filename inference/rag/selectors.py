"""Knowledge-base reads: what a user may see, and vector search."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from pgvector.django import CosineDistance

from inference.models import Chunk, Document, KnowledgeBase, Visibility


def knowledge_bases_visible_to(user: User) -> QuerySet[KnowledgeBase]:
    """Owned, or shared with the user or one of their groups."""
    shared = Q(visibility=Visibility.SHARED) & (
        Q(shared_with_users=user) | Q(shared_with_groups__in=user.groups.all())
    )
    return KnowledgeBase.objects.filter(Q(owner=user) | shared).distinct()


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def knowledge_base_get_for_user(*, user: User, kb_id: Any) -> KnowledgeBase | None:
    """A knowledge base the user may read, or None (missing, malformed id, or not theirs)."""
    if not is_uuid(kb_id):
        return None
    return knowledge_bases_visible_to(user).filter(id=kb_id).first()


def knowledge_bases_resolve(*, user: User, kb_ids: Sequence[str]) -> tuple[list[KnowledgeBase], list[str]]:
    """(the visible ones, the ids that are missing or not visible)."""
    wanted = list(dict.fromkeys(str(i) for i in kb_ids))
    valid = [kb_id for kb_id in wanted if is_uuid(kb_id)]
    visible = {str(kb.id): kb for kb in knowledge_bases_visible_to(user).filter(id__in=valid)}
    return [visible[k] for k in wanted if k in visible], [k for k in wanted if k not in visible]


def document_get(*, kb: KnowledgeBase, document_id: Any) -> Document | None:
    if not is_uuid(document_id):
        return None
    return kb.documents.filter(id=document_id).first()


@dataclass(frozen=True)
class Hit:
    knowledge_base_id: str
    document_id: str
    document: str
    chunk_id: int
    chunk_index: int
    score: float  # cosine similarity
    text: str

    def citation(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("text")
        data["score"] = round(self.score, 4)
        return data


_iterative: bool | None = None
_iterative_lock = threading.Lock()


def _supports_iterative_scan() -> bool:
    """pgvector >= 0.8 can keep scanning the HNSW index until enough rows pass the filter."""
    global _iterative
    with _iterative_lock:
        if _iterative is None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                row = cursor.fetchone()
            version = tuple(int(p) for p in str(row[0]).split(".")[:2]) if row else (0, 0)
            _iterative = version >= (0, 8)
        return _iterative


def chunks_search(
    *,
    kb_ids: Sequence[Any],
    embedding: Sequence[float],
    top_k: int,
    min_score: float = 0.0,
    exact: bool = False,
    ef_search: int | None = None,
) -> list[Hit]:
    """The ``top_k`` chunks of these knowledge bases nearest to ``embedding`` (cosine), with a
    similarity of at least ``min_score``. HNSW (approximate) unless ``exact``."""
    if not kb_ids or top_k <= 0:
        return []
    vector = [float(x) for x in embedding]
    query = (
        Chunk.objects.filter(knowledge_base_id__in=list(kb_ids))
        .annotate(distance=CosineDistance("embedding", vector))
        .order_by("distance")
        .values_list("id", "index", "text", "distance", "document_id", "document__name", "knowledge_base_id")
    )
    with transaction.atomic(), connection.cursor() as cursor:
        if exact:
            # No index: a sequential scan computes every distance (the recall reference).
            cursor.execute("SET LOCAL enable_indexscan = off")
        else:
            cursor.execute(
                "SET LOCAL hnsw.ef_search = %s", [max(top_k, ef_search or settings.SLUICE_HNSW_EF_SEARCH)]
            )
            if _supports_iterative_scan():
                cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = list(query[:top_k])
    hits = [
        Hit(
            knowledge_base_id=str(kb_id),
            document_id=str(doc_id),
            document=doc_name,
            chunk_id=chunk_id,
            chunk_index=index,
            score=1.0 - float(distance),
            text=text,
        )
        for chunk_id, index, text, distance, doc_id, doc_name, kb_id in rows
    ]
    hits.sort(key=lambda hit: -hit.score)  # relaxed order: re-sort
    return [hit for hit in hits if hit.score >= min_score]
