"""Knowledge bases, their documents, and search.

Visibility: the owner always; with ``visibility: shared``, also the named users and groups,
read-only (they may search and retrieve from it, not change it: 403). Anyone else gets 404
on every route, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import IntegrityError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.apis.base import GatewayApiView
from gateway.apis.sessions import PAGE, page_params
from gateway.auth import request_user
from gateway.bodies import validated_body
from gateway.errors import ApiError
from gateway.fields import StrictCharField, StrictFloatField, StrictIntegerField
from gateway.parsers import BoundedJSONParser
from inference.core.audit import audit_changed, audit_created, audit_deleted, object_state
from inference.models import Document, KnowledgeBase, Visibility
from inference.rag.extract import ExtractionError
from inference.rag.selectors import (
    chunks_search,
    document_get,
    knowledge_base_get_for_user,
    knowledge_bases_resolve,
    knowledge_bases_visible_to,
)
from inference.rag.services import (
    EmbeddingUnavailable,
    document_delete,
    document_upload,
    embed_query_remote,
    knowledge_base_create,
    knowledge_base_delete,
    knowledge_base_update,
)


def kb_representation(kb: KnowledgeBase, *, viewer: User) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(kb.id),
        "object": "knowledge_base",
        "name": kb.name,
        "description": kb.description,
        "visibility": kb.visibility,
        "owner": kb.owner.username,
        "version": kb.version,
        "documents": kb.documents.count(),
        "created_at": kb.created_at.isoformat(),
        "updated_at": kb.updated_at.isoformat(),
    }
    if kb.owner_id == viewer.pk:
        body["shared_with"] = {
            "users": sorted(kb.shared_with_users.values_list("username", flat=True)),
            "groups": sorted(kb.shared_with_groups.values_list("name", flat=True)),
        }
    return body


def document_representation(document: Document) -> dict[str, Any]:
    total = document.chunks_total
    return {
        "id": str(document.id),
        "object": "document",
        "knowledge_base_id": str(document.knowledge_base_id),
        "name": document.name,
        "content_type": document.content_type,
        "size_bytes": document.size_bytes,
        "status": document.status,
        "chunks_done": document.chunks_done,
        "chunks_total": total,
        "progress": round(document.chunks_done / total, 3)
        if total
        else (1.0 if document.status == "ready" else 0.0),
        "error": document.error or None,
        "created_at": document.created_at.isoformat(),
        "updated_at": document.updated_at.isoformat(),
    }


def _not_found(what: str, ident: str) -> ApiError:
    return ApiError(f"No {what} with id '{ident}'.", status_code=status.HTTP_404_NOT_FOUND, code="not_found")


def get_kb_or_404(request: Request, kb_id: str, *, write: bool = False) -> KnowledgeBase:
    user = request_user(request)
    kb = knowledge_base_get_for_user(user=user, kb_id=kb_id)
    if kb is None:
        raise _not_found("knowledge base", kb_id)
    if write and kb.owner_id != user.pk:
        raise ApiError(
            "Only the owner of this knowledge base can change it.",
            status_code=status.HTTP_403_FORBIDDEN,
            code="forbidden",
        )
    return kb


class SharedWithSerializer(serializers.Serializer):
    users = serializers.ListField(child=StrictCharField(max_length=150), required=False, max_length=100)
    groups = serializers.ListField(child=StrictCharField(max_length=150), required=False, max_length=100)


class KnowledgeBaseWriteSerializer(serializers.Serializer):
    name = StrictCharField(required=False, max_length=200)
    description = StrictCharField(required=False, allow_blank=True, max_length=500)
    visibility = serializers.ChoiceField(choices=Visibility.choices, required=False)
    shared_with = SharedWithSerializer(required=False)


def _validated(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    return validated_body(request, serializer_class)


def _sharing(data: dict[str, Any]) -> tuple[list[User] | None, list[Group] | None]:
    shared = data.get("shared_with")
    if shared is None:
        return None, None
    names = list(dict.fromkeys(shared.get("users", [])))
    users = list(User.objects.filter(username__in=names))
    if len(users) != len(names):
        unknown = sorted(set(names) - {u.username for u in users})
        raise ApiError(f"Unknown user(s): {', '.join(unknown)}.", param="shared_with.users")
    group_names = list(dict.fromkeys(shared.get("groups", [])))
    groups = list(Group.objects.filter(name__in=group_names))
    if len(groups) != len(group_names):
        unknown = sorted(set(group_names) - {g.name for g in groups})
        raise ApiError(f"Unknown group(s): {', '.join(unknown)}.", param="shared_with.groups")
    return users, groups


def _duplicate_name(name: str) -> ApiError:
    return ApiError(
        f"You already have a knowledge base named '{name}'.",
        status_code=status.HTTP_409_CONFLICT,
        code="duplicate_name",
        param="name",
    )


class KnowledgeBaseCreateApi(GatewayApiView):
    @extend_schema(
        request=KnowledgeBaseWriteSerializer,
        responses={201: OpenApiResponse(description="the knowledge base")},
    )
    def post(self, request: Request) -> Response:
        data = _validated(KnowledgeBaseWriteSerializer, request)
        if not data.get("name", "").strip():
            raise ApiError("Give the knowledge base a 'name'.", param="name")
        users, groups = _sharing(data)
        user = request_user(request)
        try:
            kb = knowledge_base_create(
                owner=user,
                name=data["name"].strip(),
                description=data.get("description", ""),
                visibility=data.get("visibility", Visibility.PRIVATE),
                shared_users=users or [],
                shared_groups=groups or [],
            )
        except IntegrityError as exc:
            raise _duplicate_name(data["name"]) from exc
        audit_created(kb, actor=user, via="api", request=request._request)
        return Response(kb_representation(kb, viewer=user), status=status.HTTP_201_CREATED)


class KnowledgeBaseListApi(GatewayApiView):
    @extend_schema(
        responses={200: OpenApiResponse(description="knowledge bases you own or that are shared with you")},
        operation_id="knowledge_bases_list",
    )
    def get(self, request: Request) -> Response:
        user = request_user(request)
        kbs = knowledge_bases_visible_to(user).select_related("owner").order_by("name")
        return Response({"object": "list", "data": [kb_representation(kb, viewer=user) for kb in kbs]})


class KnowledgeBaseCollectionApi(KnowledgeBaseListApi, KnowledgeBaseCreateApi):
    """``/api/v1/knowledge-bases``: list (GET), create (POST)."""


class KnowledgeBaseGetApi(GatewayApiView):
    @extend_schema(responses={200: OpenApiResponse(description="the knowledge base")})
    def get(self, request: Request, kb_id: str) -> Response:
        return Response(kb_representation(get_kb_or_404(request, kb_id), viewer=request_user(request)))


class KnowledgeBaseUpdateApi(GatewayApiView):
    @extend_schema(
        request=KnowledgeBaseWriteSerializer,
        responses={200: OpenApiResponse(description="the knowledge base")},
    )
    def patch(self, request: Request, kb_id: str) -> Response:
        kb = get_kb_or_404(request, kb_id, write=True)
        data = _validated(KnowledgeBaseWriteSerializer, request)
        users, groups = _sharing(data)
        before = object_state(kb)
        try:
            kb = knowledge_base_update(
                kb=kb,
                name=data["name"].strip() if data.get("name") else None,
                description=data.get("description"),
                visibility=data.get("visibility"),
                shared_users=users,
                shared_groups=groups,
            )
        except IntegrityError as exc:
            raise _duplicate_name(data.get("name", "")) from exc
        audit_changed(kb, before, actor=request_user(request), via="api", request=request._request)
        return Response(kb_representation(kb, viewer=request_user(request)))


class KnowledgeBaseDeleteApi(GatewayApiView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, kb_id: str) -> Response:
        kb = get_kb_or_404(request, kb_id, write=True)
        audit_deleted(kb, actor=request_user(request), via="api", request=request._request)
        knowledge_base_delete(kb=kb)
        return Response(status=status.HTTP_204_NO_CONTENT)


class KnowledgeBaseDetailApi(KnowledgeBaseGetApi, KnowledgeBaseUpdateApi, KnowledgeBaseDeleteApi):
    """``/api/v1/knowledge-bases/{id}``: get, update (owner), delete (owner; documents too)."""


class DocumentTextSerializer(serializers.Serializer):
    name = StrictCharField(max_length=255)
    text = StrictCharField(trim_whitespace=False, allow_blank=True)
    content_type = StrictCharField(required=False, max_length=100)


class DocumentUploadApi(GatewayApiView):
    parser_classes = [MultiPartParser, BoundedJSONParser]

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}, "name": {"type": "string"}},
            },
            "application/json": DocumentTextSerializer,
        },
        responses={202: OpenApiResponse(description="the document, queued for ingestion")},
        summary="Upload a document (text, Markdown, HTML, PDF); the same name replaces it",
    )
    def post(self, request: Request, kb_id: str) -> Response:
        kb = get_kb_or_404(request, kb_id, write=True)
        upload = request.FILES.get("file") if hasattr(request, "FILES") else None
        limit = settings.SLUICE_MAX_UPLOAD_BYTES
        if upload is not None and upload.size is not None and upload.size > limit:
            raise ApiError(
                f"The file is too large ({upload.size} bytes; the limit is {limit}).",
                status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                code="file_too_large",
                param="file",
            )
        if upload is not None:
            name = str(request.data.get("name") or upload.name or "").strip()
            raw = upload.read()
            content_type = upload.content_type
        else:
            data = _validated(DocumentTextSerializer, request)
            name, raw = data["name"].strip(), data["text"].encode("utf-8")
            if len(raw) > limit:
                raise ApiError(
                    f"The text is too large ({len(raw)} bytes; the limit is {limit}).",
                    status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                    code="file_too_large",
                    param="text",
                )
            content_type = data.get("content_type") or "text/plain"
        if not name:
            raise ApiError("Give the document a 'name'.", param="name")
        try:
            document = document_upload(kb=kb, name=name[:255], raw=raw, content_type=content_type)
        except ExtractionError as exc:
            raise ApiError(
                str(exc),
                status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                code="unsupported_file",
                param="file",
            ) from exc
        return Response(document_representation(document), status=status.HTTP_202_ACCEPTED)


class DocumentListApi(GatewayApiView):
    @extend_schema(
        parameters=PAGE,
        responses={200: OpenApiResponse(description="documents with their status")},
        operation_id="documents_list",
    )
    def get(self, request: Request, kb_id: str) -> Response:
        kb = get_kb_or_404(request, kb_id)
        limit, offset = page_params(request, default=100, most=500)
        documents = kb.documents.defer("raw", "text").order_by("name")
        return Response(
            {
                "object": "list",
                "data": [document_representation(d) for d in documents[offset : offset + limit]],
                "total": documents.count(),
            }
        )


class DocumentCollectionApi(DocumentListApi, DocumentUploadApi):
    """``/api/v1/knowledge-bases/{id}/documents``: list (GET), upload (POST)."""


def get_document_or_404(request: Request, kb_id: str, document_id: str, *, write: bool = False) -> Document:
    kb = get_kb_or_404(request, kb_id, write=write)
    document = document_get(kb=kb, document_id=document_id)
    if document is None:
        raise _not_found("document", document_id)
    return document


class DocumentGetApi(GatewayApiView):
    @extend_schema(responses={200: OpenApiResponse(description="the document and its ingestion progress")})
    def get(self, request: Request, kb_id: str, document_id: str) -> Response:
        return Response(document_representation(get_document_or_404(request, kb_id, document_id)))


class DocumentDeleteApi(GatewayApiView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, kb_id: str, document_id: str) -> Response:
        document_delete(document=get_document_or_404(request, kb_id, document_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentDetailApi(DocumentGetApi, DocumentDeleteApi):
    """``/api/v1/knowledge-bases/{id}/documents/{document_id}``: get, delete (owner)."""


class SearchSerializer(serializers.Serializer):
    query = StrictCharField(max_length=2000)
    knowledge_base_ids = serializers.ListField(
        child=StrictCharField(max_length=64), min_length=1, max_length=10
    )
    top_k = StrictIntegerField(required=False, min_value=1, max_value=50)
    min_score = StrictFloatField(required=False, min_value=-1.0, max_value=1.0)


class KnowledgeSearchApi(GatewayApiView):
    @extend_schema(
        request=SearchSerializer,
        responses={200: OpenApiResponse(description="the nearest chunks, best first, with scores")},
        summary="Search knowledge bases (no generation)",
    )
    def post(self, request: Request) -> Response:
        data = _validated(SearchSerializer, request)
        found, missing = knowledge_bases_resolve(
            user=request_user(request), kb_ids=data["knowledge_base_ids"]
        )
        if missing:
            raise _not_found("knowledge base", missing[0])
        try:
            vector = embed_query_remote(data["query"])
        except EmbeddingUnavailable as exc:
            raise ApiError(
                f"Search is unavailable: {exc}.",
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                code="embeddings_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        hits = chunks_search(
            kb_ids=[kb.id for kb in found],
            embedding=vector,
            top_k=data.get("top_k", settings.SLUICE_RAG_TOP_K),
            min_score=data.get("min_score", settings.SLUICE_RAG_MIN_SCORE),
        )
        return Response({"object": "list", "data": [{**hit.citation(), "text": hit.text} for hit in hits]})
