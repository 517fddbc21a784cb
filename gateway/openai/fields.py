"""The OpenAI request bodies' field types: messages and their content parts, tool calls,
``logit_bias``, token-id lists, ``stream_options``, ``prompt``. The request serializers that use
them are in ``serializers.py``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from gateway.errors import ApiError
from gateway.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
)
from gateway.parameters import Refused, check_parameters

MAX_PROMPTS = 64  # prompts in one /v1/completions batch
MAX_LOGIT_BIAS = 1024  # entries (OpenAI allows 300; vLLM any)
MAX_TOKEN_LIST = 1024  # stop_token_ids, allowed_token_ids


def unsupported(message: str, param: str) -> ApiError:
    return ApiError(message, code="unsupported_parameter", param=param)


def invalid(message: str, param: str) -> ApiError:
    return ApiError(message, code="invalid_value", param=param)


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False, allow_null=True)
    # vLLM: a usage object on every chunk (the counts so far).
    continuous_usage_stats = StrictBooleanField(required=False, default=False, allow_null=True)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            check_parameters(
                data,
                known=self.fields,
                refused={
                    "include_obfuscation": Refused("stream obfuscation is not implemented", (None, False))
                },
                error=unsupported,
                prefix="stream_options.",
            )
        return super().to_internal_value(data)


@extend_schema_field({"type": "object", "additionalProperties": {"type": "number"}, "nullable": True})
class LogitBiasField(serializers.Field):
    """``{"<token id>": bias}``, bias in [-100, 100] (OpenAI's form and range)."""

    default_error_messages = {
        "invalid": "Must be an object mapping token ids (as strings) to numbers between -100 and 100.",
        "too_many": f"At most {MAX_LOGIT_BIAS} entries.",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> tuple[tuple[int, float], ...]:
        if not isinstance(data, dict):
            self.fail("invalid")
        if len(data) > MAX_LOGIT_BIAS:
            self.fail("too_many")
        pairs = []
        for key, value in data.items():
            if not isinstance(key, str) or not key.isascii() or not key.isdigit() or len(key) > 9:
                self.fail("invalid")
            if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
                self.fail("invalid")
            pairs.append((int(key), float(value)))
        return tuple(sorted(pairs))

    def to_representation(self, value: Any) -> Any:
        return {str(token): bias for token, bias in value}


def token_list(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=StrictIntegerField(min_value=0, max_value=2**31 - 1),
        required=False,
        allow_null=True,
        max_length=MAX_TOKEN_LIST,
        **kwargs,
    )


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


class ToolCallFunctionSerializer(serializers.Serializer):
    name = StrictCharField(max_length=64)
    arguments = StrictCharField(allow_blank=True, trim_whitespace=False, max_length=1_000_000)


class ToolCallSerializer(serializers.Serializer):
    """An assistant message's earlier call, as the API returned it."""

    id = StrictCharField(max_length=200)
    type = serializers.ChoiceField(choices=["function"], required=False, default="function")
    function = ToolCallFunctionSerializer()


# Fields an assistant message carries when a client sends back the message object it received
# (the openai SDK's model_dump()): accepted empty.
_ECHOED_MESSAGE_FIELDS = {
    "refusal": Refused("a refusal is not sent back to the model", (None,)),
    "annotations": Refused("annotations are not sent back to the model", (None, [])),
    "audio": Refused("only text models are served"),
    "function_call": Refused("the legacy function-calling API is not implemented; use 'tool_calls'"),
    "reasoning_content": Refused("no served model reasons"),
}


class ChatMessageSerializer(serializers.Serializer):
    # Any role the model's chat template renders (system, user, assistant, tool, and custom
    # roles, as vLLM passes them through); a template that does not know one answers 400.
    role = serializers.RegexField(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$", max_length=32)
    content = MessageContentField()
    # TGI's own chat client sends "name": null on every message.
    name = StrictCharField(required=False, allow_null=True, max_length=64)
    tool_calls = serializers.ListField(
        child=ToolCallSerializer(), required=False, allow_null=True, max_length=128
    )
    tool_call_id = StrictCharField(required=False, allow_null=True, max_length=200)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            check_parameters(data, known=self.fields, refused=_ECHOED_MESSAGE_FIELDS, error=unsupported)
        value = super().to_internal_value(data)
        if value.get("tool_calls") and value["role"] != "assistant":
            raise serializers.ValidationError({"tool_calls": "Only an assistant message carries tool calls."})
        if value["role"] == "tool" and not value.get("tool_call_id"):
            raise serializers.ValidationError({"tool_call_id": "A tool message names the call it answers."})
        return value


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
