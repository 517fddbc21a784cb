"""Request bodies of the OpenAI Responses API (text in, text out)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from gateway.errors import ApiError
from gateway.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField

# Parameters the Responses API defines that Sluice does not implement: accepted at their
# neutral value, refused otherwise.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "auto", "none"),
    "parallel_tool_calls": (None, True, False),
    "truncation": (None, "disabled"),
    "reasoning": (None, {}),
    "include": (None, []),
    "max_tool_calls": (None,),
    "prompt": (None,),
    "conversation": (None,),
    "top_logprobs": (None, 0),
    "service_tier": (None, "auto", "default"),
}

_TEXT_PARTS = {"input_text", "output_text", "text"}


def check_neutral(data: dict[str, Any]) -> None:
    for name, neutral in NEUTRAL.items():
        if name in data and data[name] not in neutral:
            raise ApiError(
                f"'{name}' is not supported by this server.", code="unsupported_parameter", param=name
            )
    text = data.get("text")
    if text not in (None, {}) and (
        not isinstance(text, dict) or text.get("format") not in (None, {"type": "text"})
    ):
        raise ApiError(
            "Only text output is supported (text.format: {'type': 'text'}).",
            code="unsupported_parameter",
            param="text",
        )


def input_messages(value: Any) -> list[dict[str, Any]]:
    """``input`` (a string or a list of message items) -> [{role, content}] with text content.
    Raises ApiError naming the offending item."""
    if isinstance(value, str):
        if not value.strip():
            raise ApiError("The input is empty.", code="empty_prompt", param="input")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ApiError(
            "'input' must be a string or a non-empty list of message items.",
            code="invalid_value",
            param="input",
        )
    if len(value) > 1000:
        raise ApiError("At most 1000 input items.", code="invalid_value", param="input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise ApiError("Each input item must be an object.", code="invalid_value", param=param)
        kind = item.get("type", "message")
        if kind != "message":
            raise ApiError(
                f"Input items of type '{kind}' are not supported.",
                code="unsupported_content",
                param=f"{param}.type",
            )
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise ApiError(f"Invalid role {role!r}.", code="invalid_value", param=f"{param}.role")
        content = item.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for number, part in enumerate(content):
                if (
                    not isinstance(part, dict)
                    or part.get("type") not in _TEXT_PARTS
                    or not isinstance(part.get("text"), str)
                ):
                    kind_name = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ApiError(
                        f"Only text content is supported ({param} has a '{kind_name}' part).",
                        code="unsupported_content",
                        param=f"{param}.content[{number}]",
                    )
                parts.append(part["text"])
            text = "".join(parts)
        else:
            raise ApiError(
                "Message content must be a string or a list of parts.",
                code="invalid_value",
                param=f"{param}.content",
            )
        messages.append({"role": role, "content": text})
    return messages


class ResponseCreateSerializer(serializers.Serializer):
    model = StrictCharField(max_length=200)
    input = serializers.JSONField()
    instructions = StrictCharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False)
    max_output_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    stream = StrictBooleanField(required=False, allow_null=True, default=False)
    store = StrictBooleanField(required=False, allow_null=True, default=True)
    background = StrictBooleanField(required=False, allow_null=True, default=False)
    previous_response_id = StrictCharField(required=False, allow_null=True, max_length=100)
    metadata = serializers.DictField(
        child=StrictCharField(max_length=512, allow_blank=True), required=False, allow_null=True
    )
    user = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    text = serializers.JSONField(required=False, allow_null=True)
    # Sluice's extension (as on chat): continue past end-of-sequence up to max_output_tokens.
    ignore_eos = StrictBooleanField(required=False, default=False)

    def validate_metadata(self, value: dict[str, str] | None) -> dict[str, str]:
        value = value or {}
        if len(value) > 16 or any(len(key) > 64 for key in value):
            raise serializers.ValidationError("At most 16 pairs, keys of at most 64 characters.")
        return value

    def validate_top_p(self, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise serializers.ValidationError("Must be greater than 0.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for name, default in (("stream", False), ("store", True), ("background", False)):
            attrs[name] = default if attrs.get(name) is None else bool(attrs[name])
        if attrs["background"] and not attrs["store"]:
            raise serializers.ValidationError({"background": "Background responses need 'store': true."})
        return attrs
