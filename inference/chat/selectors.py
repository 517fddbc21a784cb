"""Chat reads: sessions, their messages, profiles."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, QuerySet

from inference.models import ChatSession, Message, UserProfile
from inference.rag.selectors import is_uuid


def sessions_for_user(*, user: User) -> QuerySet[ChatSession]:
    return ChatSession.objects.filter(user=user).annotate(message_count=Count("messages"))


def session_get_for_user(*, user: User, session_id: Any) -> ChatSession | None:
    if not is_uuid(session_id):
        return None
    return sessions_for_user(user=user).filter(id=session_id).first()


def session_history(*, session_id: Any, limit: int = 1000) -> list[dict[str, str]]:
    """The newest ``limit`` messages, oldest first (what the worker feeds the model)."""
    rows = list(
        Message.objects.filter(session_id=session_id).order_by("-id").values_list("role", "content")[:limit]
    )
    return [{"role": role, "content": content} for role, content in reversed(rows)]


def profile_attributes(*, user_id: int) -> dict[str, str]:
    profile = UserProfile.objects.filter(user_id=user_id).first()
    if profile is None:
        return {}
    return {"language": profile.language, "role": profile.role, "interests": profile.interests}
