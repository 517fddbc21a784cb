"""Request bodies of the TGI-compatible routes (TGI's names, limits and 422s)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.request import Request

from gateway import structured
from gateway.bodies import body_object
from gateway.errors import ApiError, first_error
from gateway.fields import (
    AnyJSONField,
    StopField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from gateway.parameters import Refused, check_parameters, declared
from gateway.prepare import MAX_TOP_LOGPROBS

TGI_DEFAULT_MAX_NEW_TOKENS = 100

# Parameters TGI defines that Sluice does not implement: accepted at their neutral value.
REFUSED: dict[str, Refused] = {
    "watermark": Refused("watermarking is not implemented", (None, False)),
    "adapter_id": Refused("LoRA adapters are not served", (None, "")),
}


class TgiParametersSerializer(serializers.Serializer):
    max_new_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=100.0)
    top_k = StrictIntegerField(required=False, allow_null=True, min_value=1)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    typical_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    repetition_penalty = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=100.0)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2.0, max_value=2.0)
    do_sample = StrictBooleanField(required=False, default=False)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=2**64 - 1)
    stop = StopField()
    details = StrictBooleanField(required=False, default=False)
    return_full_text = StrictBooleanField(required=False, default=False, allow_null=True)
    decoder_input_details = StrictBooleanField(required=False, default=False)
    truncate = StrictIntegerField(required=False, allow_null=True, min_value=1)
    top_n_tokens = StrictIntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_TOP_LOGPROBS
    )
    # Parallel sampling: the best of this many sequences (by total log-probability).
    best_of = StrictIntegerField(required=False, allow_null=True)
    # {"type": "json" | "regex", "value": ...} (read by gateway/structured.py).
    grammar = AnyJSONField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # TGI's own checks and words (its clients show them as they are).
        for name, low, high, message in (
            ("repetition_penalty", 0.0, None, "`repetition_penalty` must be strictly positive"),
            ("typical_p", 0.0, 1.0, "`typical_p` must be > 0.0 and < 1.0"),
        ):
            value = attrs.get(name)
            if value is not None and (value <= low or (high is not None and value >= high)):
                raise serializers.ValidationError({name: message})
        return attrs


class TgiGenerateSerializer(serializers.Serializer):
    inputs = StrictCharField(allow_blank=True, trim_whitespace=False)
    parameters = TgiParametersSerializer(required=False, default=dict)
    stream = StrictBooleanField(required=False, default=False)


def unprocessable(message: str, *, param: str | None = None, code: str = "validation") -> ApiError:
    return ApiError(
        message,
        status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
        code=code,
        param=param,
        tgi_type="validation",
    )


def validated(request: Request) -> dict[str, Any]:
    body = body_object(request, error=lambda message, code: unprocessable(message, code=code))

    def refuse(message: str, param: str) -> ApiError:
        return unprocessable(message, code="unsupported_parameter", param=param)

    check_parameters(body, known=TgiGenerateSerializer().fields, refused={}, error=refuse)
    parameters = body.get("parameters") or {}
    if isinstance(parameters, dict):
        check_parameters(
            parameters,
            known=declared(TgiParametersSerializer, REFUSED),
            refused=REFUSED,
            error=refuse,
            prefix="parameters.",
        )
    serializer = TgiGenerateSerializer(data=body)
    if not serializer.is_valid():
        param, message = first_error(serializer.errors)
        raise unprocessable(f"Invalid value for '{param}': {message}", param=param)
    data = dict(serializer.validated_data)
    found = structured.grammar(
        (data.get("parameters") or {}).get("grammar"), refuse_grammar, param="parameters.grammar"
    )
    data["constraint"] = structured.one([found] if found else [], refuse_grammar)
    return data


def refuse_grammar(message: str, param: str) -> ApiError:
    return unprocessable(message, param=param)
