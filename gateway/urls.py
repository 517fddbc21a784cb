from __future__ import annotations

from django.urls import path

from gateway.apis.health import HealthApi, ReadinessApi
from gateway.apis.jobs import JobCancelApi, JobCreateApi, JobDetailApi, JobEventsApi
from gateway.apis.openai import ChatCompletionCreateApi, CompletionCreateApi, ModelListApi
from gateway.apis.quota import QuotaGetApi
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
    # Health
    path("healthz", HealthApi.as_view(), name="healthz"),
    path("readyz", ReadinessApi.as_view(), name="readyz"),
    # TGI's compatibility route is the site root; it must stay last.
    path("", TgiCompatGenerateApi.as_view(), name="tgi-compat"),
]
