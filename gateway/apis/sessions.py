"""Chat sessions: create, list, get (with messages, paginated), rename, delete.

A chat request with ``session_id`` continues one (see the OpenAI and jobs APIs). Another
user's session is a 404 on every route.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.apis.base import GatewayApiView
from gateway.auth import request_user
from gateway.bodies import validated_body
from gateway.errors import ApiError
from gateway.fields import StrictCharField
from inference.chat.selectors import session_get_for_user, sessions_for_user
from inference.chat.services import session_create, session_delete, session_rename
from inference.models import ChatSession, Message

PAGE = [OpenApiParameter("limit", int), OpenApiParameter("offset", int)]


MAX_OFFSET = 10**9


def page_params(request: Request, *, default: int = 20, most: int = 100) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", default))
        offset = int(request.query_params.get("offset", 0))
    except ValueError as exc:
        raise ApiError("'limit' and 'offset' must be integers.", param="limit") from exc
    if limit < 1 or offset < 0:
        raise ApiError("'limit' must be >= 1 and 'offset' >= 0.", param="limit")
    if offset > MAX_OFFSET:  # Postgres' OFFSET is a 64-bit integer: beyond it, a 500
        raise ApiError(f"'offset' must be at most {MAX_OFFSET}.", code="invalid_value", param="offset")
    return min(limit, most), offset


def session_representation(session: ChatSession) -> dict[str, Any]:
    return {
        "id": str(session.id),
        "object": "chat.session",
        "title": session.title,
        "message_count": getattr(session, "message_count", None),
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
    }


def message_representation(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "job_id": str(message.job_id) if message.job_id else None,
        "created_at": message.created_at.isoformat(),
    }


def get_session_or_404(request: Request, session_id: str) -> ChatSession:
    session = session_get_for_user(user=request_user(request), session_id=session_id)
    if session is None:
        raise ApiError(
            f"No session with id '{session_id}'.", status_code=status.HTTP_404_NOT_FOUND, code="not_found"
        )
    return session


class SessionWriteSerializer(serializers.Serializer):
    title = StrictCharField(required=False, allow_blank=True, max_length=200)


def _validated(request: Request) -> dict[str, Any]:
    return validated_body(request, SessionWriteSerializer)


class SessionCreateApi(GatewayApiView):
    @extend_schema(
        request=SessionWriteSerializer, responses={201: OpenApiResponse(description="the session")}
    )
    def post(self, request: Request) -> Response:
        session = session_create(user=request_user(request), title=_validated(request).get("title", ""))
        session.message_count = 0  # type: ignore[attr-defined]
        return Response(session_representation(session), status=status.HTTP_201_CREATED)


class SessionListApi(GatewayApiView):
    @extend_schema(
        parameters=PAGE,
        responses={200: OpenApiResponse(description="your sessions, newest first")},
        operation_id="sessions_list",
    )
    def get(self, request: Request) -> Response:
        limit, offset = page_params(request)
        sessions = sessions_for_user(user=request_user(request))
        return Response(
            {
                "object": "list",
                "data": [session_representation(s) for s in sessions[offset : offset + limit]],
                "total": sessions.count(),
                "limit": limit,
                "offset": offset,
            }
        )


class SessionCollectionApi(SessionListApi, SessionCreateApi):
    """``/api/v1/sessions``: list (GET) and create (POST)."""


class SessionGetApi(GatewayApiView):
    @extend_schema(
        parameters=PAGE,
        responses={200: OpenApiResponse(description="the session and a page of its messages, oldest first")},
    )
    def get(self, request: Request, session_id: str) -> Response:
        session = get_session_or_404(request, session_id)
        limit, offset = page_params(request, default=50, most=500)
        messages = session.messages.order_by("id")
        body = session_representation(session)
        body["messages"] = {
            "object": "list",
            "data": [message_representation(m) for m in messages[offset : offset + limit]],
            "total": messages.count(),
            "limit": limit,
            "offset": offset,
        }
        return Response(body)


class SessionRenameApi(GatewayApiView):
    @extend_schema(
        request=SessionWriteSerializer, responses={200: OpenApiResponse(description="the session")}
    )
    def patch(self, request: Request, session_id: str) -> Response:
        session = get_session_or_404(request, session_id)
        data = _validated(request)
        if "title" not in data:
            raise ApiError("Give a 'title'.", param="title")
        session = session_rename(session=session, title=data["title"])
        return Response(session_representation(session))


class SessionDeleteApi(GatewayApiView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, session_id: str) -> Response:
        session_delete(session=get_session_or_404(request, session_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionDetailApi(SessionGetApi, SessionRenameApi, SessionDeleteApi):
    """``/api/v1/sessions/{id}``: get (GET), rename (PATCH), delete (DELETE)."""
