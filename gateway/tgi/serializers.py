"""Request bodies of the TGI-compatible routes (TGI's names, limits and 422s)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.request import Request

from gateway.errors import ApiError, first_error
from gateway.fields import (
    AnyJSONField,
    StopField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from gateway.prepare import MAX_TOP_LOGPROBS

TGI_DEFAULT_MAX_NEW_TOKENS = 100

# Parameters TGI defines that Sluice does not implement: accepted at their neutral value.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1, 1.0),
    "frequency_penalty": (None, 0, 0.0),
    "typical_p": (None, 1, 1.0),
    "watermark": (None, False),
    "grammar": (None,),
    "adapter_id": (None, ""),
}


class TgiParametersSerializer(serializers.Serializer):
    max_new_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=100.0)
    top_k = StrictIntegerField(required=False, allow_null=True, min_value=1)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
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
    # Accepted at their neutral values (see NEUTRAL); typed loosely so the check can say why.
    repetition_penalty = AnyJSONField()
    frequency_penalty = AnyJSONField()
    typical_p = AnyJSONField()
    watermark = AnyJSONField()
    # Parallel sampling: the best of this many sequences (by total log-probability).
    best_of = StrictIntegerField(required=False, allow_null=True)
    grammar = AnyJSONField()
    adapter_id = AnyJSONField()


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
    if not isinstance(request.data, dict):
        raise unprocessable("The request body must be a JSON object.", code="invalid_json")
    parameters = request.data.get("parameters") or {}
    if isinstance(parameters, dict):
        for name, neutral in NEUTRAL.items():
            if name in parameters and parameters[name] not in neutral:
                raise unprocessable(
                    f"'{name}' is not supported by this server.",
                    code="unsupported_parameter",
                    param=f"parameters.{name}",
                )
    serializer = TgiGenerateSerializer(data=request.data)
    if not serializer.is_valid():
        param, message = first_error(serializer.errors)
        raise unprocessable(f"Invalid value for '{param}': {message}", param=param)
    return dict(serializer.validated_data)
