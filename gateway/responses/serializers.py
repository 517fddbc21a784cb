"""Request bodies of the OpenAI Responses API (text in, text out)."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from gateway.errors import ApiError
from gateway.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from gateway.parameters import Refused, check_parameters

# Parameters the Responses API defines that Sluice does not implement: accepted at their
# neutral value, refused otherwise.
REFUSED: dict[str, Refused] = {
    "truncation": Refused(
        "the conversation is trimmed to the context window from its oldest turns", (None, "disabled")
    ),
    "reasoning": Refused("no served model reasons", (None, {})),
    "include": Refused("no extra output data is available", (None, [])),
    "max_tool_calls": Refused("the number of calls is bounded by parallel_tool_calls only"),
    "prompt": Refused("stored prompt templates are not implemented"),
    "conversation": Refused("conversations are continued with previous_response_id"),
    "top_logprobs": Refused("log-probabilities are not reported on the Responses API", (None, 0)),
    "service_tier": Refused("there is one service tier", (None, "auto", "default")),
    "stream_options": Refused("no stream options are implemented", (None, {})),
    "background_options": Refused("no background options are implemented", (None, {})),
    "context_management": Refused("context management is not implemented", (None, [])),
    "prompt_cache_key": Refused("prefix caching is automatic and keyed by the prompt itself"),
    "prompt_cache_retention": Refused("prefix caching is automatic and keyed by the prompt itself"),
    "prompt_cache_options": Refused("prefix caching is automatic and keyed by the prompt itself"),
    "safety_identifier": Refused("use 'user'", (None, "")),
    "moderation": Refused("moderation is configured as the caller's output guards"),
    "access_programs": Refused("access programs are not implemented", (None, [])),
    "image": Refused("only text models are served"),
}

_TEXT_PARTS = {"input_text", "output_text", "text"}


def tools_of(value: Any) -> list[dict[str, Any]] | None:
    """The Responses API's flat function tools in chat's nested form (what the template gets)."""
    if value in (None, []):
        return None
    if not isinstance(value, list):
        raise ApiError("'tools' must be a list.", code="invalid_value", param="tools")
    out = []
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise ApiError(
                f"Only function tools are supported ('{kind}' is not).",
                code="unsupported_parameter",
                param=f"tools[{index}]",
            )
        check_parameters(
            tool,
            known={"type", "name", "description", "parameters", "strict"},
            refused={},
            error=lambda message, param: ApiError(message, code="unsupported_parameter", param=param),
            prefix=f"tools[{index}].",
        )
        function = {
            key: tool[key] for key in ("name", "description", "parameters") if tool.get(key) is not None
        }
        out.append({"type": "function", "function": function})
    return out


def text_format(value: Any) -> tuple[dict[str, Any] | None, Any]:
    """``text``: its ``format`` as given (echoed on the response) and as a chat
    ``response_format`` (``json_schema`` carries its fields flat here)."""
    if value in (None, {}):
        return None, None
    if not isinstance(value, dict):
        raise ApiError("'text' must be an object.", code="invalid_value", param="text")
    check_parameters(
        value,
        known={"format"},
        refused={"verbosity": Refused("no served model has a verbosity setting")},
        error=lambda message, param: ApiError(message, code="unsupported_parameter", param=param),
        prefix="text.",
    )
    fmt = value.get("format")
    if fmt is None or fmt == {"type": "text"}:
        return None, None
    if not isinstance(fmt, dict):
        raise ApiError("'text.format' must be an object.", code="invalid_value", param="text.format")
    if fmt.get("type") == "json_schema":
        spec = {key: fmt[key] for key in ("name", "description", "schema", "strict") if key in fmt}
        extra = set(fmt) - {"type", "name", "description", "schema", "strict"}
        if extra:
            raise ApiError(
                f"Unrecognized request argument supplied: 'text.format.{sorted(extra)[0]}'.",
                code="unsupported_parameter",
                param=f"text.format.{sorted(extra)[0]}",
            )
        return fmt, {"type": "json_schema", "json_schema": spec}
    return fmt, fmt


def input_messages(value: Any) -> list[dict[str, Any]]:
    """``input`` (a string or a list of items) -> chat messages: message items as
    {role, content}; a ``function_call`` item (the model's earlier call, sent back) as an
    assistant message with ``tool_calls``; a ``function_call_output`` as a ``tool`` message.
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
        if kind == "function_call":
            call = _function_call(item, param)
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            continue
        if kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not call_id:
                raise ApiError(
                    "'call_id' names the call answered.", code="invalid_value", param=f"{param}.call_id"
                )
            if not isinstance(output, str):
                output = json.dumps(output, ensure_ascii=False) if output is not None else ""
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            continue
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


def _function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "{}")
    if not isinstance(call_id, str) or not call_id:
        raise ApiError("'call_id' is required.", code="invalid_value", param=f"{param}.call_id")
    if not isinstance(name, str) or not name:
        raise ApiError("'name' is required.", code="invalid_value", param=f"{param}.name")
    if not isinstance(arguments, str):
        raise ApiError("'arguments' must be a JSON string.", code="invalid_value", param=f"{param}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


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
    # Function tools (read by tools_of and inference/tools/calls.py).
    tools = serializers.JSONField(required=False, allow_null=True)
    tool_choice = serializers.JSONField(required=False, allow_null=True)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True, default=None)
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
