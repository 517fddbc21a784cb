from __future__ import annotations

from django.urls import path

from gateway.apis.health import HealthApi, ReadinessApi
from gateway.apis.jobs import JobCancelApi, JobCreateApi, JobDetailApi, JobEventsApi
from gateway.apis.knowledge import (
    DocumentCollectionApi,
    DocumentDetailApi,
    KnowledgeBaseCollectionApi,
    KnowledgeBaseDetailApi,
    KnowledgeSearchApi,
)
from gateway.apis.openai import ChatCompletionCreateApi, CompletionCreateApi, ModelListApi
from gateway.apis.profile import ProfileApi
from gateway.apis.quota import QuotaGetApi
from gateway.apis.sessions import SessionCollectionApi, SessionDetailApi
from gateway.apis.tgi import TgiCompatGenerateApi, TgiGenerateApi, TgiGenerateStreamApi, TgiInfoApi

urlpatterns = [
    # OpenAI-compatible
    path("v1/chat/completions", ChatCompletionCreateApi.as_view(), name="chat-completions"),
    path("v1/completions", CompletionCreateApi.as_view(), name="completions"),
    path("v1/models", ModelListApi.as_view(), name="models"),
    # TGI-compatible
    path("generate", TgiGenerateApi.as_view(), name="tgi-generate"),
    path("generate_stream", TgiGenerateStreamApi.as_view(), name="tgi-generate-stream"),
    path("info", TgiInfoApi.as_view(), name="tgi-info"),
    # Native jobs
    path("api/v1/jobs", JobCreateApi.as_view(), name="jobs"),
    path("api/v1/jobs/<str:job_id>", JobDetailApi.as_view(), name="job-detail"),
    path("api/v1/jobs/<str:job_id>/events", JobEventsApi.as_view(), name="job-events"),
    path("api/v1/jobs/<str:job_id>/cancel", JobCancelApi.as_view(), name="job-cancel"),
    path("api/v1/me/quota", QuotaGetApi.as_view(), name="quota"),
    path("api/v1/me/profile", ProfileApi.as_view(), name="profile"),
    # Conversations
    path("api/v1/sessions", SessionCollectionApi.as_view(), name="sessions"),
    path("api/v1/sessions/<str:session_id>", SessionDetailApi.as_view(), name="session-detail"),
    # Knowledge bases
    path("api/v1/knowledge-bases", KnowledgeBaseCollectionApi.as_view(), name="knowledge-bases"),
    path("api/v1/knowledge-bases/search", KnowledgeSearchApi.as_view(), name="knowledge-search"),
    path(
        "api/v1/knowledge-bases/<str:kb_id>", KnowledgeBaseDetailApi.as_view(), name="knowledge-base-detail"
    ),
    path("api/v1/knowledge-bases/<str:kb_id>/documents", DocumentCollectionApi.as_view(), name="documents"),
    path(
        "api/v1/knowledge-bases/<str:kb_id>/documents/<str:document_id>",
        DocumentDetailApi.as_view(),
        name="document-detail",
    ),
    # Health
    path("healthz", HealthApi.as_view(), name="healthz"),
    path("readyz", ReadinessApi.as_view(), name="readyz"),
    # TGI's compatibility route is the site root; it must stay last.
    path("", TgiCompatGenerateApi.as_view(), name="tgi-compat"),
]
