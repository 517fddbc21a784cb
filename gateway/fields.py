"""Strict JSON field types: `"12"` is not an integer and `"yes"` is not a boolean.

DRF coerces strings into numbers and booleans (it was built for HTML forms). An inference API
receives JSON only, and a wrong type is almost always a client bug that should be reported,
not guessed at.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        if isinstance(data, float) and not data.is_integer():
            self.fail("invalid")
        return int(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


@extend_schema_field(
    {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}],
        "nullable": True,
    }
)
class StopField(serializers.Field):
    """``stop``: a string or a list of up to 4 non-empty strings (OpenAI's limit)."""

    default_error_messages = {
        "invalid": "Must be a string or a list of strings.",
        "too_many": "At most 4 stop sequences are allowed.",
        "empty": "Stop sequences must not be empty.",
        "too_long": "A stop sequence may be at most 256 characters long.",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            self.fail("invalid")
        if len(data) > 4:
            self.fail("too_many")
        if any(item == "" for item in data):
            self.fail("empty")
        if any(len(item) > 256 for item in data):
            self.fail("too_long")
        return list(data)

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"nullable": True})
class AnyJSONField(serializers.Field):
    """Accepts any JSON value; used for parameters that must keep their default."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class RagOptionsSerializer(serializers.Serializer):
    """Retrieval options of a request that names knowledge bases."""

    top_k = StrictIntegerField(required=False, min_value=1, max_value=20)
    min_score = StrictFloatField(required=False, min_value=-1.0, max_value=1.0)


class ContextFieldsMixin(serializers.Serializer):
    """Sluice's chat extensions: continue a session, retrieve from knowledge bases."""

    session_id = StrictCharField(required=False, allow_null=True, max_length=64)
    knowledge_base_ids = serializers.ListField(
        child=StrictCharField(max_length=64), required=False, allow_empty=True, max_length=10
    )
    rag = RagOptionsSerializer(required=False, allow_null=True)
