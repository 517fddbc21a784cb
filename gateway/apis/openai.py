"""OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.apis.base import GatewayApiView
from gateway.auth import request_api_key, request_user
from gateway.errors import ApiError
from gateway.fields import (
    AnyJSONField,
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
    openai_chat_response,
    openai_completion_response,
    prepare_chat,
    prepare_completion,
    raise_for_failed,
    resolve_chat_context,
    route_or_404,
)
from gateway.streaming import (
    admitted_stream,
    observe_completed,
    openai_chat_stream,
    openai_completion_stream,
    openai_refused,
    sse_response,
)
from inference.models import Job
from inference.registry import served_models
from inference.selectors import job_wait_finished

# Parameters OpenAI defines that Sluice does not implement: accepted at their neutral value
# (clients often send defaults explicitly), refused otherwise rather than silently ignored.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
}


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


class ContentPartSerializer(serializers.Serializer):
    type = StrictCharField()
    text = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                },
            },
        ],
        "nullable": True,
    }
)
class MessageContentField(serializers.Field):
    default_error_messages = {"invalid": "Must be a string, a list of content parts, or null."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            return data
        if isinstance(data, list):
            parts = ContentPartSerializer(data=data, many=True)
            parts.is_valid(raise_exception=True)
            return parts.validated_data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = MessageContentField()
    name = StrictCharField(required=False, max_length=64)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tool_calls"):
            raise serializers.ValidationError({"tool_calls": "Tool calls are not supported."})
        return super().to_internal_value(data)


class SamplingSerializer(serializers.Serializer):
    """Fields shared by chat and text completions."""

    model = StrictCharField(max_length=200)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    top_k = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=100_000)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=-(2**63), max_value=2**63 - 1)
    stop = StopField()
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    # Extension (as in vLLM): keep generating past end-of-sequence, up to max_tokens.
    ignore_eos = StrictBooleanField(required=False, default=False)

    def validate_top_p(self, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise serializers.ValidationError("Must be greater than 0.")
        return value


class ChatCompletionSerializer(ContextFieldsMixin, SamplingSerializer):
    messages: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=ChatMessageSerializer(), allow_empty=False, max_length=1000
    )
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    response_format = AnyJSONField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        fmt = attrs.get("response_format")
        if fmt not in (None, {"type": "text"}):
            raise serializers.ValidationError({"response_format": "Only {'type': 'text'} is supported."})
        return attrs


class CompletionSerializer(SamplingSerializer):
    prompt = serializers.JSONField()
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)

    def validate_prompt(self, value: Any) -> str:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]
        if not isinstance(value, str):
            raise serializers.ValidationError("Must be a string (batches of prompts are not supported).")
        return value


def _check_neutral(data: Any) -> None:
    if not isinstance(data, dict):
        return
    for name, neutral in _NEUTRAL.items():
        if name in data and data[name] not in neutral:
            raise ApiError(
                f"'{name}' is not supported by this server.", code="unsupported_parameter", param=name
            )


def _check_max_tokens(value: int | None, param: str) -> None:
    if value is not None and value > settings.SLUICE_MAX_NEW_TOKENS:
        raise ApiError(
            f"{param} is too large: {value}. The maximum is {settings.SLUICE_MAX_NEW_TOKENS}.",
            code="invalid_value",
            param=param,
        )


def _validated(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ApiError("The request body must be a JSON object.", code="invalid_json")
    _check_neutral(request.data)
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _temperature(data: dict[str, Any]) -> float:
    value = data.get("temperature")
    return 1.0 if value is None else float(value)


def _respond(
    request: Request,
    prepared: PreparedRequest,
    data: dict[str, Any],
    *,
    source: str,
    id_prefix: str,
    streamer: Any,
    body_for: Any,
    started: float,
) -> Any:
    """Admit, create the job, answer: a stream (that may first wait in a queue, showing its
    position) or one JSON body (after waiting, if the policy allows it)."""
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))

    def stream_for(job: Job) -> Any:
        return streamer(
            job_id=str(job.id),
            response_id=f"{id_prefix}-{job.id.hex}",
            model=job.model,
            created=int(job.queued_at.timestamp()),
            include_usage=include_usage,
            started=started,
        )

    admission = admit_prepared(request, prepared)
    user, api_key = request_user(request), request_api_key(request)

    def create() -> Job:
        return create_admitted_job(
            user=user, api_key=api_key, prepared=prepared, source=source, admission=admission
        )

    if data["stream"]:
        if admission.admitted:
            return sse_response(stream_for(create()))
        return sse_response(
            admitted_stream(admission, create=create, stream=stream_for, refused=openai_refused)
        )
    admission.wait()
    job = job_wait_finished(job_id=create().id, timeout_s=settings.SLUICE_JOB_TIMEOUT_S + 5)
    raise_for_failed(job)
    observe_completed(job, started=started)
    return Response(body_for(job))


class ChatCompletionCreateApi(GatewayApiView):
    @extend_schema(
        request=ChatCompletionSerializer,
        responses={200: OpenApiResponse(description="chat.completion, or text/event-stream of chunks")},
        summary="Create a chat completion (OpenAI-compatible)",
    )
    def post(self, request: Request) -> Any:
        started = time.perf_counter()
        data = _validated(ChatCompletionSerializer, request)
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        _check_max_tokens(max_tokens, "max_tokens")
        model = route_or_404(data["model"], user=request_user(request))
        context = resolve_chat_context(user=request_user(request), data=data)
        prepared = prepare_chat(
            model=model,
            context=context,
            messages=data["messages"],
            max_tokens=max_tokens,
            temperature=_temperature(data),
            top_p=data.get("top_p") or 1.0,
            top_k=data.get("top_k") or 0,
            seed=data.get("seed"),
            stop=data.get("stop") or (),
            ignore_eos=data["ignore_eos"],
        )
        return _respond(
            request,
            prepared,
            data,
            source="openai.chat",
            id_prefix="chatcmpl",
            streamer=openai_chat_stream,
            body_for=openai_chat_response,
            started=started,
        )


class CompletionCreateApi(GatewayApiView):
    @extend_schema(
        request=CompletionSerializer,
        responses={200: OpenApiResponse(description="text_completion, or text/event-stream of chunks")},
        summary="Create a text completion (OpenAI-compatible, legacy)",
    )
    def post(self, request: Request) -> Any:
        started = time.perf_counter()
        data = _validated(CompletionSerializer, request)
        _check_max_tokens(data.get("max_tokens"), "max_tokens")
        model = route_or_404(data["model"], user=request_user(request))
        prepared = prepare_completion(
            model=model,
            prompt=data["prompt"],
            max_tokens=data.get("max_tokens"),
            default_max_tokens=16,  # OpenAI's default for /v1/completions
            temperature=_temperature(data),
            top_p=data.get("top_p") or 1.0,
            top_k=data.get("top_k") or 0,
            seed=data.get("seed"),
            stop=data.get("stop") or (),
            ignore_eos=data["ignore_eos"],
        )
        return _respond(
            request,
            prepared,
            data,
            source="openai.completions",
            id_prefix="cmpl",
            streamer=openai_completion_stream,
            body_for=openai_completion_response,
            started=started,
        )


class ModelListApi(GatewayApiView):
    @extend_schema(responses={200: OpenApiResponse(description="list of models")}, summary="List models")
    def get(self, request: Request) -> Response:
        return Response(
            {
                "object": "list",
                "data": [
                    {"id": model.name, "object": "model", "created": 0, "owned_by": "sluice"}
                    for model in served_models()
                ],
            },
            status=status.HTTP_200_OK,
        )
