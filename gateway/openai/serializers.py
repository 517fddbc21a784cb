"""Request bodies of the OpenAI-compatible routes (strict JSON types, OpenAI's limits)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
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
from gateway.prepare import MAX_TOP_LOGPROBS
from inference.sampling_params import SamplingParams

MAX_PROMPTS = 64  # prompts in one /v1/completions batch

# Parameters OpenAI defines that Sluice does not implement: accepted at their neutral value
# (clients often send defaults explicitly), refused otherwise rather than silently ignored.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
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


def check_neutral(data: Any) -> None:
    if not isinstance(data, dict):
        return
    for name, neutral in NEUTRAL.items():
        if name in data and data[name] not in neutral:
            raise ApiError(
                f"'{name}' is not supported by this server.", code="unsupported_parameter", param=name
            )


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
    # TGI's own chat client sends "name": null on every message.
    name = StrictCharField(required=False, allow_null=True, max_length=64)

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
    # Parallel sampling: up to SLUICE_MAX_N choices (checked in validate_n: a setting).
    n = StrictIntegerField(required=False, allow_null=True, min_value=1)
    stream = StrictBooleanField(required=False, default=False, allow_null=True)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    metadata = serializers.DictField(child=StrictCharField(max_length=512), required=False, allow_null=True)
    # Extension (as in vLLM): keep generating past end-of-sequence, up to max_tokens.
    ignore_eos = StrictBooleanField(required=False, default=False)
    # Extension (as in vLLM): log-probabilities name tokens "token_id:<id>" (a gateway in
    # front of this one reads exact ids; Sluice's own openai backend does).
    return_tokens_as_token_ids = StrictBooleanField(required=False, default=False)

    def validate_n(self, value: int | None) -> int | None:
        if value is not None and value > settings.SLUICE_MAX_N:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {settings.SLUICE_MAX_N} (SLUICE_MAX_N)."
            )
        return value

    def validate_top_p(self, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise serializers.ValidationError("Must be greater than 0.")
        return value

    @staticmethod
    def common_sampling(data: dict[str, Any], *, max_tokens: int | None, top_logprobs: int) -> SamplingParams:
        temperature = data.get("temperature")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if temperature is None else float(temperature),
            top_p=data.get("top_p") or 1.0,
            top_k=data.get("top_k") or 0,
            seed=data.get("seed"),
            stop=tuple(data.get("stop") or ()),
            ignore_eos=bool(data.get("ignore_eos")),
            top_logprobs=top_logprobs,
        )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        attrs["stream"] = bool(attrs.get("stream"))
        if attrs.get("stream_options") is not None and not attrs["stream"]:
            # As OpenAI: the option only means something for a stream.
            raise serializers.ValidationError(
                {"stream_options": "The 'stream_options' parameter is only allowed when 'stream' is enabled."}
            )
        return attrs


class ChatCompletionSerializer(ContextFieldsMixin, SamplingSerializer):
    messages: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=ChatMessageSerializer(), allow_empty=False, max_length=1000
    )
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    response_format = AnyJSONField()
    logprobs = StrictBooleanField(required=False, allow_null=True, default=False)
    top_logprobs = StrictIntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_TOP_LOGPROBS
    )

    @classmethod
    def to_sampling_params(cls, data: dict[str, Any]) -> SamplingParams:
        return cls.common_sampling(
            data,
            max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
            top_logprobs=int(data.get("top_logprobs") or 0),
        )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        fmt = attrs.get("response_format")
        if fmt not in (None, {"type": "text"}):
            raise serializers.ValidationError({"response_format": "Only {'type': 'text'} is supported."})
        if attrs.get("top_logprobs") and not attrs.get("logprobs"):
            raise serializers.ValidationError(
                {"top_logprobs": "'top_logprobs' needs 'logprobs' set to true."}
            )
        return attrs


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
            {"type": "array", "items": {"type": "integer"}},
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        ]
    }
)
class PromptField(serializers.Field):
    """``prompt``: a string, a list of strings, a list of token ids, or a list of such lists.
    Internally always a list of prompts (each a string or a list of ids)."""

    default_error_messages = {
        "invalid": (
            "Must be a string, a list of strings, a list of token ids, or a list of lists of token ids."
        ),
        "empty": "Must not be an empty list.",
        "too_many": "At most {max_items} items per request.",
    }

    def __init__(self, *, max_items: int = MAX_PROMPTS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_items = max_items

    def to_internal_value(self, data: Any) -> list[str | list[int]]:
        def ids(value: Any) -> bool:
            return (
                isinstance(value, list)
                and bool(value)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
            )

        if isinstance(data, str):
            return [data]
        if not isinstance(data, list):
            self.fail("invalid")
        if not data:
            self.fail("empty")
        if ids(data):
            return [list(data)]
        if all(isinstance(item, str) for item in data) or all(ids(item) for item in data):
            if len(data) > self.max_items:
                self.fail("too_many", max_items=self.max_items)
            return [item if isinstance(item, str) else list(item) for item in data]
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class CompletionSerializer(SamplingSerializer):
    prompt = PromptField()
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    # Legacy completions: the number of alternatives per token (0 = the chosen token only).
    logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_TOP_LOGPROBS)

    @classmethod
    def to_sampling_params(cls, data: dict[str, Any]) -> SamplingParams:
        return cls.common_sampling(
            data, max_tokens=data.get("max_tokens"), top_logprobs=int(data.get("logprobs") or 0)
        )
