"""Conversations and the user attributes that shape the system prompt."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class ChatSession(models.Model):
    """A conversation. A request naming it continues it: the worker loads its history."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"], name="session_user_recent")]

    def __str__(self) -> str:
        return self.title or str(self.id)


class MessageRole(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class Message(models.Model):
    """One turn's message. Written when the turn's job succeeds: the request's messages and
    the reply, together, so a failed or cancelled turn leaves no half in the history."""

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField()
    job = models.ForeignKey(
        "inference.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "id"]
        indexes = [models.Index(fields=["session", "id"], name="message_session_order")]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class UserProfile(models.Model):
    """Attributes the user sets about themselves. They fill fixed slots of a server-side
    system-prompt template (inference/chat/prompting.py); they are never rendered as a template."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    language = models.CharField(max_length=64, blank=True, help_text="preferred answer language")
    role = models.CharField(max_length=120, blank=True, help_text="e.g. 'data engineer'")
    interests = models.CharField(max_length=500, blank=True, help_text="comma-separated topics")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"profile of {self.user}"
