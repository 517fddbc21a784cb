"""Native asynchronous jobs: submit, poll, follow as SSE (resumable), cancel."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.apis.base import GatewayApiView
from gateway.apis.openai import ChatMessageSerializer
from gateway.auth import request_api_key, request_user
from gateway.errors import ApiError
from gateway.fields import (
    ContextFieldsMixin,
    StopField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from gateway.protocol import (
    PreparedRequest,
    admit_prepared,
    create_admitted_job,
    job_representation,
    prepare_chat,
    prepare_completion,
    resolve_chat_context,
    route_or_404,
)
from gateway.streaming import native_job_stream, sse_response
from inference.models import Job
from inference.selectors import job_get_for_user, job_list_for_user
from inference.services import job_cancel


class JobCreateSerializer(ContextFieldsMixin, serializers.Serializer):
    """Either ``messages`` (chat; may continue a session and retrieve from knowledge bases) or
    ``prompt`` (raw completion)."""

    model = StrictCharField(required=False, max_length=200)
    messages: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=ChatMessageSerializer(), required=False, allow_empty=False, max_length=1000
    )
    prompt = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    top_k = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=100_000)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=-(2**63), max_value=2**63 - 1)
    stop = StopField()
    ignore_eos = StrictBooleanField(required=False, default=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("messages" in attrs) == ("prompt" in attrs):
            raise serializers.ValidationError("Give exactly one of 'messages' or 'prompt'.")
        if "prompt" in attrs and (attrs.get("session_id") or attrs.get("knowledge_base_ids")):
            raise serializers.ValidationError(
                {"prompt": "session_id and knowledge_base_ids need 'messages' (a chat), not 'prompt'."}
            )
        if attrs.get("top_p") is not None and attrs["top_p"] <= 0:
            raise serializers.ValidationError({"top_p": "Must be greater than 0."})
        max_tokens = attrs.get("max_tokens")
        if max_tokens is not None and max_tokens > settings.SLUICE_MAX_NEW_TOKENS:
            raise serializers.ValidationError(
                {"max_tokens": f"Must be at most {settings.SLUICE_MAX_NEW_TOKENS}."}
            )
        return attrs


def job_prepare(data: dict[str, Any], *, user: Any) -> PreparedRequest:
    """Validated native/WebSocket request -> a prepared job (shared by REST and WebSocket)."""
    model = route_or_404(data.get("model"), user=user)
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": data.get("max_tokens"),
        "temperature": 1.0 if data.get("temperature") is None else data["temperature"],
        "top_p": data.get("top_p") or 1.0,
        "top_k": data.get("top_k") or 0,
        "seed": data.get("seed"),
        "stop": data.get("stop") or (),
        "ignore_eos": bool(data.get("ignore_eos")),
    }
    if "messages" in data:
        return prepare_chat(
            messages=data["messages"], context=resolve_chat_context(user=user, data=data), **common
        )
    return prepare_completion(
        prompt=data["prompt"], default_max_tokens=settings.SLUICE_DEFAULT_MAX_TOKENS, **common
    )


def _get_or_404(request: Request, job_id: str) -> Job:
    job = job_get_for_user(user=request_user(request), job_id=job_id)
    if job is None:
        raise ApiError(f"No job with id '{job_id}'.", status_code=status.HTTP_404_NOT_FOUND, code="not_found")
    return job


class JobCreateApi(GatewayApiView):
    @extend_schema(
        request=JobCreateSerializer,
        responses={202: OpenApiResponse(description="the queued job")},
        summary="Submit a job",
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise ApiError("The request body must be a JSON object.", code="invalid_json")
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        prepared = job_prepare(dict(serializer.validated_data), user=request_user(request))
        admission = admit_prepared(request, prepared)
        # An asynchronous API still waits here, within the policy's max queue wait: the job
        # row only exists once admitted.
        admission.wait()
        job = create_admitted_job(
            user=request_user(request),
            api_key=request_api_key(request),
            prepared=prepared,
            source="jobs",
            admission=admission,
        )
        response = Response(job_representation(job), status=status.HTTP_202_ACCEPTED)
        response["Location"] = f"/api/v1/jobs/{job.id}"
        return response

    @extend_schema(
        parameters=[OpenApiParameter("limit", int), OpenApiParameter("status", str)],
        responses={200: OpenApiResponse(description="your most recent jobs")},
        summary="List your jobs",
        operation_id="jobs_list",
    )
    def get(self, request: Request) -> Response:
        try:
            limit = max(1, min(100, int(request.query_params.get("limit", 20))))
        except ValueError as exc:
            raise ApiError("'limit' must be an integer.", param="limit") from exc
        jobs = job_list_for_user(user=request_user(request))
        if request.query_params.get("status"):
            jobs = jobs.filter(status=request.query_params["status"])
        return Response({"object": "list", "data": [job_representation(job) for job in jobs[:limit]]})


class JobDetailApi(GatewayApiView):
    @extend_schema(
        responses={200: OpenApiResponse(description="the job")}, summary="Get a job", operation_id="jobs_get"
    )
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_representation(_get_or_404(request, job_id)))


class JobEventsApi(GatewayApiView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "Last-Event-ID", str, OpenApiParameter.HEADER, description="resume after this event"
            ),
            OpenApiParameter(
                "last_event_id", str, description="the same, for clients that cannot set headers"
            ),
        ],
        responses={200: OpenApiResponse(description="text/event-stream: queued, started, token..., end")},
        summary="Follow a job's events (SSE, resumable)",
    )
    def get(self, request: Request, job_id: str) -> Any:
        job = _get_or_404(request, job_id)
        after = request.headers.get("Last-Event-ID") or request.query_params.get("last_event_id") or "0-0"
        if not _valid_stream_id(after):
            raise ApiError("Last-Event-ID must be an event id from this stream.", param="Last-Event-ID")
        return sse_response(native_job_stream(job_id=str(job.id), after=after))


def _valid_stream_id(value: str) -> bool:
    millis, sep, seq = value.partition("-")
    return bool(sep) and millis.isdigit() and seq.isdigit()


class JobCancelApi(GatewayApiView):
    @extend_schema(
        request=None, responses={202: OpenApiResponse(description="the job")}, summary="Cancel a job"
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = _get_or_404(request, job_id)
        if not job.is_terminal:
            job = job_cancel(job=job)
        return Response(job_representation(job), status=status.HTTP_202_ACCEPTED)
