"""The native job request (REST ``POST /api/v1/jobs`` and WebSocket ``request`` messages)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

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
from gateway.guards import guards_for
from gateway.openai.fields import ChatMessageSerializer, LogitBiasField, token_list
from gateway.openai.serializers import SamplingSerializer
from gateway.parameters import check_parameters
from gateway.prepare import (
    PreparedRequest,
    prepare_chat,
    prepare_completion,
    resolve_chat_context,
    route_or_404,
)


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
    # The sampling controls and output constraints of the OpenAI routes, under the same names.
    min_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    presence_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2.0, max_value=2.0)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2.0, max_value=2.0)
    repetition_penalty = StrictFloatField(required=False, allow_null=True, min_value=0.01, max_value=10.0)
    logit_bias = LogitBiasField()
    min_tokens = StrictIntegerField(required=False, allow_null=True, min_value=0)
    stop_token_ids = token_list()
    response_format = AnyJSONField()

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            check_parameters(
                data,
                known=self.fields,
                refused={},
                error=lambda message, param: ApiError(message, code="unsupported_parameter", param=param),
            )
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("messages" in attrs) == ("prompt" in attrs):
            raise serializers.ValidationError("Give exactly one of 'messages' or 'prompt'.")
        if "prompt" in attrs and (attrs.get("session_id") or attrs.get("knowledge_base_ids")):
            raise serializers.ValidationError(
                {"prompt": "session_id and knowledge_base_ids need 'messages' (a chat), not 'prompt'."}
            )
        if attrs.get("top_p") is not None and attrs["top_p"] <= 0:
            raise serializers.ValidationError({"top_p": "Must be greater than 0."})
        return attrs


def job_prepare(data: dict[str, Any], *, user: Any, api_key: Any = None) -> PreparedRequest:
    """Validated native/WebSocket request -> a prepared job (shared by REST and WebSocket)."""
    model = route_or_404(data.get("model"), user=user)
    guards = guards_for(user=user, api_key=api_key)
    sampling = SamplingSerializer.common_sampling(
        data,
        max_tokens=data.get("max_tokens"),
        top_logprobs=0,
        constraint=SamplingSerializer.constraint({"response_format": data.get("response_format")}),
    )
    if "messages" in data:
        return prepare_chat(
            model=model,
            messages=data["messages"],
            context=resolve_chat_context(user=user, data=data),
            sampling=sampling,
            guards=guards,
        )
    return prepare_completion(
        model=model,
        prompt=data["prompt"],
        sampling=sampling,
        default_max_tokens=settings.SLUICE_DEFAULT_MAX_TOKENS,
        guards=guards,
    )
