"""Chat writes: sessions (create, rename, delete), a finished turn's messages, profiles."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from inference.models import ChatSession, Job, Message, UserProfile


def session_create(*, user: User, title: str = "") -> ChatSession:
    return ChatSession.objects.create(user=user, title=title)


def session_rename(*, session: ChatSession, title: str) -> ChatSession:
    session.title = title
    session.save(update_fields=["title", "updated_at"])
    return session


def session_delete(*, session: ChatSession) -> None:
    session.delete()  # messages cascade; jobs keep their rows (session set to null)


def session_record_turn(*, job: Job, messages: Sequence[dict[str, str]], reply: str) -> None:
    """A turn succeeded: store the request's messages and the reply together."""
    if job.session_id is None:
        return
    with transaction.atomic():
        if not ChatSession.objects.filter(id=job.session_id).exists():
            return  # deleted meanwhile
        rows = [
            Message(session_id=job.session_id, role=m["role"], content=m["content"], job=job)
            for m in messages
        ]
        rows.append(Message(session_id=job.session_id, role="assistant", content=reply, job=job))
        Message.objects.bulk_create(rows)
        ChatSession.objects.filter(id=job.session_id).update(updated_at=timezone.now())


def profile_update(*, user: User, **attributes: str) -> UserProfile:
    profile, _ = UserProfile.objects.get_or_create(user=user)
    for name in ("language", "role", "interests"):
        if name in attributes:
            setattr(profile, name, attributes[name])
    profile.save()
    return profile
