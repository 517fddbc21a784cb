"""OpenAI Responses API on durable jobs.

``POST /v1/responses``, ``GET /v1/responses/{id}`` (``?stream=true&starting_after=N`` replays
its events from any sequence number), ``POST /v1/responses/{id}/cancel``,
``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``.

A response is a job: it passes admission like every other request, runs on the fleet,
survives a dead worker (the job is resumed from its stream), and with ``background: true``
runs on when its client leaves. ``previous_response_id`` continues a conversation: the
worker puts the chain of earlier responses (their inputs and outputs) before the new input,
as OpenAI does, without their instructions. The peers keep this state in memory; Sluice
keeps it in Postgres and Redis Streams.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway import structured
from gateway.admission import with_ratelimit
from gateway.apis.base import GatewayApiView, StreamingApiView
from gateway.auth import request_api_key, request_user
from gateway.bodies import validated_body
from gateway.errors import ApiError, openai_exception_handler
from gateway.guards import guards_for
from gateway.idempotency import IdempotencyClaim
from gateway.parameters import check_parameters, declared
from gateway.prepare import prepare_chat, route_or_404
from gateway.responses import shaping, streaming
from gateway.responses.serializers import (
    REFUSED,
    ResponseCreateSerializer,
    input_messages,
    text_format,
    tools_of,
)
from gateway.sse import observe_completed, sse, sse_response
from gateway.submission import Caller, Submission, raise_for_failed
from inference.client import job_client
from inference.models import Job, JobStatus
from inference.sampling_params import SamplingParams
from inference.tools.calls import ToolError, forced_constraint, tool_plan

CANCEL_WAIT_S = 5.0


class ResponsesView(StreamingApiView):
    def get_exception_handler(self) -> Any:
        return openai_exception_handler


def _not_found(value: str, param: str | None = None) -> ApiError:
    return ApiError(
        f"No response found with id '{value}'.",
        status_code=status.HTTP_404_NOT_FOUND,
        code="not_found",
        param=param,
    )


def _get_or_404(request: Request, value: str, *, param: str | None = None) -> Job:
    job_id = shaping.job_id_of(value)
    job = job_client.get_response(user=request_user(request), job_id=job_id) if job_id else None
    if job is None:
        raise _not_found(value, param)
    return job


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(message, code="invalid_value", param=param)


def refused(exc: ApiError) -> list[bytes]:
    """Refused after waiting in the queue: an ``error`` event (the SDK raises it)."""
    body = exc.body()
    error = body["error"]
    return [
        sse(
            {
                "type": "error",
                "sequence_number": 0,
                "code": error["code"],
                "message": error["message"],
                "param": error["param"],
                **body,
            },
            event="error",
        )
    ]


class ResponseCreateApi(ResponsesView):
    @extend_schema(
        request=ResponseCreateSerializer,
        responses={200: OpenApiResponse(description="a response, or text/event-stream of its events")},
        summary="Create a response (OpenAI Responses API)",
    )
    def post(self, request: Request) -> Any:
        data = validated_body(
            request,
            ResponseCreateSerializer,
            check=lambda body: check_parameters(
                body,
                known=declared(ResponseCreateSerializer, REFUSED),
                refused=REFUSED,
                error=lambda message, param: ApiError(message, code="unsupported_parameter", param=param),
            ),
        )
        user = request_user(request)
        items = input_messages(data["input"])
        previous: Job | None = None
        history: list[dict[str, str]] = []
        if data.get("previous_response_id"):
            previous = _get_or_404(request, data["previous_response_id"], param="previous_response_id")
            if previous.status != JobStatus.SUCCEEDED:
                raise ApiError(
                    f"Previous response '{data['previous_response_id']}' has not completed "
                    f"(status {shaping.state_of(previous).status}); only a completed response can be "
                    "continued.",
                    code="invalid_value",
                    param="previous_response_id",
                )
            history = job_client.conversation(previous.id)
        model = route_or_404(data["model"], user=user)
        instructions = data.get("instructions") or None
        temperature = data.get("temperature")
        try:
            tools = tool_plan(
                tools_of(data.get("tools")),
                data.get("tool_choice"),
                parallel=data.get("parallel_tool_calls"),
                parser=model.tool_parser,
            )
        except ToolError as exc:
            raise ApiError(str(exc), code="invalid_value", param=exc.param) from exc
        fmt, response_format = text_format(data.get("text"))
        found = structured.response_format(response_format, _invalid, param="text.format")
        forced = forced_constraint(tools) if tools is not None else None
        # A forced call is the whole output: text.format constrains turns with text (checked anyway).
        constraint = structured.one([found] if found else [], _invalid)
        if forced is not None:
            constraint = structured.one([(forced, "tool_choice")], _invalid)
        prepared = prepare_chat(
            model=model,
            guards=guards_for(user=user, api_key=request_api_key(request)),
            messages=([{"role": "system", "content": instructions}] if instructions else []) + items,
            history=history,
            sampling=SamplingParams(
                max_tokens=data.get("max_output_tokens"),
                temperature=1.0 if temperature is None else temperature,
                top_p=data.get("top_p") or 1.0,
                ignore_eos=bool(data.get("ignore_eos")),
                structured=constraint[0] if constraint is not None else None,
            ),
            tools=tools,
            param_names={"structured": "text.format"},
            messages_param="input",
            max_tokens_param="max_output_tokens",
            extra={
                "previous_id": previous.id if previous is not None else None,
                "store": data["store"],
                "background": data["background"],
                "metadata": data.get("metadata") or {},
            },
        )
        normalized = prepared.input["messages"][1:] if instructions else prepared.input["messages"]
        prepared = replace(
            prepared,
            input={
                "messages": normalized,
                "instructions": instructions,
                "item_ids": [f"{shaping.MESSAGE_PREFIX}{uuid.uuid4().hex}" for _ in normalized],
                "max_output_tokens": data.get("max_output_tokens"),
                **{key: prepared.input[key] for key in ("tool_plan",) if key in prepared.input},
                **({"text_format": fmt} if fmt else {}),
            },
        )
        claim = IdempotencyClaim.begin(request, user_id=user.pk)
        submission = Submission(Caller.of(request), prepared, source="responses", idempotency=claim)
        submission.admit()
        if data["stream"]:
            return with_ratelimit(
                submission.stream(
                    lambda job: streaming.event_stream(
                        job, cancel_if_gone=not data["background"], started=submission.started
                    ),
                    refused=refused,
                ),
                submission.admission,
            )
        if data["background"]:
            return with_ratelimit(
                Response(shaping.response_object(submission.accept())), submission.admission
            )
        job = job_client.wait_end(submission.accept().id, timeout_s=_timeout())
        if job.status != JobStatus.CANCELLED:
            raise_for_failed(job)
            observe_completed(job, started=submission.started)
        return with_ratelimit(Response(shaping.response_object(job)), submission.admission)


def _timeout() -> float:
    return float(settings.SLUICE_JOB_TIMEOUT_S + 5)


class ResponseDetailApi(ResponsesView):
    @extend_schema(
        parameters=[
            OpenApiParameter("stream", bool, description="replay the response's events as SSE"),
            OpenApiParameter("starting_after", int, description="only events after this sequence number"),
        ],
        responses={200: OpenApiResponse(description="the response, or text/event-stream of its events")},
        summary="Retrieve a response (its events with stream=true)",
    )
    def get(self, request: Request, response_id: str) -> Any:
        job = _get_or_404(request, response_id)
        if request.query_params.get("stream") not in ("true", "1", "True"):
            return Response(shaping.response_object(job))
        raw = request.query_params.get("starting_after", "-1")
        try:
            starting_after = int(raw)
        except ValueError as exc:
            raise ApiError(
                "'starting_after' must be an integer.", code="invalid_value", param="starting_after"
            ) from exc
        if not -1 <= starting_after < 2**62:
            raise ApiError("'starting_after' is out of range.", code="invalid_value", param="starting_after")
        # A replay never cancels: the response belongs to whoever created it.
        return sse_response(streaming.event_stream(job, starting_after=starting_after, cancel_if_gone=False))

    @extend_schema(responses={200: OpenApiResponse(description="deleted")}, summary="Delete a response")
    def delete(self, request: Request, response_id: str) -> Response:
        job = job_client.delete(_get_or_404(request, response_id))
        return Response({"id": shaping.response_id(job), "object": "response", "deleted": True})


class ResponseCancelApi(ResponsesView):
    @extend_schema(
        request=None,
        responses={200: OpenApiResponse(description="the response")},
        summary="Cancel a response",
    )
    def post(self, request: Request, response_id: str) -> Response:
        job = job_client.cancel(_get_or_404(request, response_id))
        if not job.is_terminal:
            # A running job stops at the engine's next step: answer with its final state, as
            # OpenAI does, unless that takes unusually long (then it says in_progress).
            job = job_client.wait_end(job.id, timeout_s=CANCEL_WAIT_S)
        return Response(shaping.response_object(job))


class ResponseInputItemsApi(GatewayApiView):
    def get_exception_handler(self) -> Any:
        return openai_exception_handler

    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int),
            OpenApiParameter("order", str, enum=["asc", "desc"]),
            OpenApiParameter("after", str),
            OpenApiParameter("before", str),
        ],
        responses={200: OpenApiResponse(description="the response's input items")},
        summary="List a response's input items",
    )
    def get(self, request: Request, response_id: str) -> Response:
        job = _get_or_404(request, response_id)
        params = request.query_params
        try:
            limit = int(params.get("limit", 20))
        except ValueError as exc:
            raise ApiError("'limit' must be an integer.", code="invalid_value", param="limit") from exc
        if not 1 <= limit <= 100:
            raise ApiError("'limit' must be between 1 and 100.", code="invalid_value", param="limit")
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError("'order' must be 'asc' or 'desc'.", code="invalid_value", param="order")
        items = shaping.input_items(job)
        if order == "desc":
            items.reverse()
        ids = [item["id"] for item in items]
        for name in ("after", "before"):
            cursor = params.get(name)
            if cursor is not None and cursor not in ids:
                raise ApiError(
                    f"No input item '{cursor}' in this response.", code="invalid_value", param=name
                )
        if params.get("after"):
            items = items[ids.index(params["after"]) + 1 :]
        if params.get("before"):
            position = [item["id"] for item in items].index(params["before"])
            items = items[:position]
        page = items[:limit]
        return Response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )
