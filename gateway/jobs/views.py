"""Native asynchronous jobs: submit, list, get, follow as SSE (resumable), cancel."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.admission import with_ratelimit
from gateway.apis.base import GatewayApiView, StreamingApiView
from gateway.auth import request_api_key, request_user
from gateway.bodies import validated_body
from gateway.errors import ApiError
from gateway.idempotency import IdempotencyClaim
from gateway.jobs.serializers import JobCreateSerializer, job_prepare
from gateway.jobs.shaping import job_events, job_representation
from gateway.sse import sse_response
from gateway.submission import Caller, Submission
from inference.client import job_client, valid_cursor
from inference.models import Job, JobStatus


def _query_int(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    """A query parameter that must be an integer in [low, high]: anything else is a 400 (not
    clamped: a client that asked for -1 or 10**20 has a bug worth hearing about)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None
    if value is None or not low <= value <= high:
        raise ApiError(f"'{name}' must be an integer from {low} to {high}.", code="invalid_value", param=name)
    return value


def _get_or_404(request: Request, job_id: str) -> Job:
    job = job_client.get(user=request_user(request), job_id=job_id)
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
        prepared = job_prepare(
            validated_body(request, JobCreateSerializer),
            user=request_user(request),
            api_key=request_api_key(request),
        )
        caller = Caller.of(request)
        claim = IdempotencyClaim.begin(request, user_id=caller.user.pk)
        submission = Submission(caller, prepared, source="jobs", idempotency=claim)
        submission.admit()
        # An asynchronous API still waits here, within the policy's max queue wait: the job
        # row only exists once admitted.
        job = submission.accept()
        response = Response(job_representation(job), status=status.HTTP_202_ACCEPTED)
        response["Location"] = f"/api/v1/jobs/{job.id}"
        return with_ratelimit(response, submission.admission)

    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int, description="1 to 100 (default 20)"),
            OpenApiParameter("offset", int, description="jobs to skip, newest first (default 0)"),
            OpenApiParameter("status", str, enum=JobStatus.values),
        ],
        responses={200: OpenApiResponse(description="your most recent jobs")},
        summary="List your jobs",
        operation_id="jobs_list",
    )
    def get(self, request: Request) -> Response:
        limit = _query_int(request, "limit", default=20, low=1, high=100)
        offset = _query_int(request, "offset", default=0, low=0, high=1_000_000)
        jobs = job_client.list_of(user=request_user(request))
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in JobStatus.values:
                raise ApiError(
                    f"'status' must be one of {', '.join(JobStatus.values)}.",
                    code="invalid_value",
                    param="status",
                )
            jobs = jobs.filter(status=wanted)
        page = jobs[offset : offset + limit]
        return Response({"object": "list", "data": [job_representation(job) for job in page]})


class JobDetailApi(GatewayApiView):
    @extend_schema(
        responses={200: OpenApiResponse(description="the job")}, summary="Get a job", operation_id="jobs_get"
    )
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_representation(_get_or_404(request, job_id)))


class JobEventsApi(StreamingApiView):
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
        if not valid_cursor(after):
            raise ApiError(
                "Last-Event-ID must be an event id from this stream.",
                code="invalid_value",
                param="Last-Event-ID",
            )
        return sse_response(
            job_events(job_id=str(job.id), after=after, keepalive_s=settings.SLUICE_SSE_KEEPALIVE_S)
        )


class JobCancelApi(GatewayApiView):
    @extend_schema(
        request=None, responses={202: OpenApiResponse(description="the job")}, summary="Cancel a job"
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = job_client.cancel(_get_or_404(request, job_id))
        return Response(job_representation(job), status=status.HTTP_202_ACCEPTED)
