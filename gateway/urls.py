"""The API's URLs: one block per protocol package, then catch-alls so that every path the API
owns answers an unknown URL in its JSON envelope (with DEBUG on, Django would answer HTML)."""

from __future__ import annotations

from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from gateway.apis.health import HealthzApi, ReadinessApi
from gateway.apis.keys import ApiKeyCollectionApi, ApiKeyRevokeApi
from gateway.apis.knowledge import (
    DocumentCollectionApi,
    DocumentDetailApi,
    KnowledgeBaseCollectionApi,
    KnowledgeBaseDetailApi,
    KnowledgeSearchApi,
)
from gateway.apis.profile import ProfileApi
from gateway.apis.quota import QuotaGetApi
from gateway.apis.sessions import SessionCollectionApi, SessionDetailApi
from gateway.apis.usage import UsageGetApi
from gateway.embeddings.views import EmbeddingCreateApi
from gateway.errors import unknown_url
from gateway.jobs.views import JobCancelApi, JobCreateApi, JobDetailApi, JobEventsApi
from gateway.openai.views import ChatCompletionCreateApi, CompletionCreateApi, ModelDetailApi, ModelListApi
from gateway.responses.views import (
    ResponseCancelApi,
    ResponseCreateApi,
    ResponseDetailApi,
    ResponseInputItemsApi,
)
from gateway.tgi.views import (
    HealthApi,
    TgiCompatGenerateApi,
    TgiGenerateApi,
    TgiGenerateStreamApi,
    TgiInfoApi,
)

unknown = csrf_exempt(unknown_url)

urlpatterns = [
    # OpenAI-compatible (gateway/openai, gateway/responses, gateway/embeddings)
    path("v1/chat/completions", ChatCompletionCreateApi.as_view(), name="chat-completions"),
    path("v1/completions", CompletionCreateApi.as_view(), name="completions"),
    path("v1/models", ModelListApi.as_view(), name="models"),
    path("v1/models/<path:model_id>", ModelDetailApi.as_view(), name="model-detail"),
    path("v1/embeddings", EmbeddingCreateApi.as_view(), name="embeddings"),
    path("v1/responses", ResponseCreateApi.as_view(), name="responses"),
    path("v1/responses/<str:response_id>", ResponseDetailApi.as_view(), name="response-detail"),
    path("v1/responses/<str:response_id>/cancel", ResponseCancelApi.as_view(), name="response-cancel"),
    path(
        "v1/responses/<str:response_id>/input_items",
        ResponseInputItemsApi.as_view(),
        name="response-input-items",
    ),
    # TGI-compatible (gateway/tgi)
    path("generate", TgiGenerateApi.as_view(), name="tgi-generate"),
    path("generate_stream", TgiGenerateStreamApi.as_view(), name="tgi-generate-stream"),
    path("info", TgiInfoApi.as_view(), name="tgi-info"),
    path("health", HealthApi.as_view(), name="health"),
    # Native jobs (gateway/jobs)
    path("api/v1/jobs", JobCreateApi.as_view(), name="jobs"),
    path("api/v1/jobs/<str:job_id>", JobDetailApi.as_view(), name="job-detail"),
    path("api/v1/jobs/<str:job_id>/events", JobEventsApi.as_view(), name="job-events"),
    path("api/v1/jobs/<str:job_id>/cancel", JobCancelApi.as_view(), name="job-cancel"),
    path("api/v1/me/quota", QuotaGetApi.as_view(), name="quota"),
    path("api/v1/me/profile", ProfileApi.as_view(), name="profile"),
    path("api/v1/me/usage", UsageGetApi.as_view(), name="usage"),
    path("api/v1/me/keys", ApiKeyCollectionApi.as_view(), name="keys"),
    path("api/v1/me/keys/<str:key_id>", ApiKeyRevokeApi.as_view(), name="key-detail"),
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
    # Probes
    path("healthz", HealthzApi.as_view(), name="healthz"),
    path("readyz", ReadinessApi.as_view(), name="readyz"),
    # Everything else under the API's prefixes: a JSON 404 in the owning protocol's envelope.
    re_path(r"^(?:v1|api|ws)(?:/.*)?$", unknown, name="unknown-api-url"),
    re_path(r"^(?:generate|generate_stream|info|health|healthz|readyz)/.+$", unknown, name="unknown-tgi-url"),
    # TGI's compatibility route is the site root; it must stay last.
    path("", TgiCompatGenerateApi.as_view(), name="tgi-compat"),
]
