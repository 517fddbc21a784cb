"""Inference data: jobs, chat sessions and profiles, knowledge bases (pgvector), result cache."""

from inference.models.cache import CachedResult
from inference.models.chat import ChatSession, Message, MessageRole, UserProfile
from inference.models.jobs import (
    TERMINAL_STATUSES,
    DeadLetter,
    DeadLetterReason,
    Job,
    JobFinish,
    JobKind,
    JobStatus,
    UsageDaily,
)
from inference.models.knowledge import (
    EMBEDDING_DIMENSIONS,
    Chunk,
    Document,
    DocumentStatus,
    KnowledgeBase,
    Visibility,
)
from inference.models.versions import (
    ACTIVE_STATUSES,
    Backend,
    Dtype,
    EventKind,
    ModelVersion,
    ModelVersionEvent,
    VersionStatus,
)

__all__ = [
    "ACTIVE_STATUSES",
    "EMBEDDING_DIMENSIONS",
    "TERMINAL_STATUSES",
    "Backend",
    "CachedResult",
    "ChatSession",
    "Chunk",
    "DeadLetter",
    "DeadLetterReason",
    "Document",
    "DocumentStatus",
    "Dtype",
    "EventKind",
    "Job",
    "JobFinish",
    "JobKind",
    "JobStatus",
    "KnowledgeBase",
    "Message",
    "MessageRole",
    "ModelVersion",
    "ModelVersionEvent",
    "UsageDaily",
    "UserProfile",
    "VersionStatus",
    "Visibility",
]
