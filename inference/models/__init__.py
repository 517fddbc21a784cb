"""Inference data: jobs, chat sessions and profiles, knowledge bases (pgvector), result cache."""

from inference.models.cache import CachedResult
from inference.models.chat import ChatSession, Message, MessageRole, UserProfile
from inference.models.jobs import TERMINAL_STATUSES, Job, JobKind, JobStatus
from inference.models.knowledge import (
    EMBEDDING_DIMENSIONS,
    Chunk,
    Document,
    DocumentStatus,
    KnowledgeBase,
    Visibility,
)

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "TERMINAL_STATUSES",
    "CachedResult",
    "ChatSession",
    "Chunk",
    "Document",
    "DocumentStatus",
    "Job",
    "JobKind",
    "JobStatus",
    "KnowledgeBase",
    "Message",
    "MessageRole",
    "UserProfile",
    "Visibility",
]
