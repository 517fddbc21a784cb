"""The one body helper every view uses: a JSON object, checked, then validated."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from gateway.bodies import body_object, validated_body
from gateway.errors import ApiError


class Named(serializers.Serializer):
    name = serializers.CharField(max_length=5)


def request_of(payload: Any) -> Request:
    return Request(APIRequestFactory().post("/x", payload, format="json"), parsers=[JSONParser()])


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, True])
def test_a_body_that_is_not_an_object_is_refused_in_the_routes_envelope(payload: Any) -> None:
    with pytest.raises(ApiError) as refused:
        body_object(request_of(payload))
    assert (refused.value.status_code, refused.value.error_code) == (400, "invalid_json")

    def tgi(message: str, code: str) -> Exception:
        return ApiError(message, status_code=422, code=code, tgi_type="validation")

    with pytest.raises(ApiError) as unprocessable:
        validated_body(request_of(payload), Named, error=tgi)
    assert unprocessable.value.status_code == 422 and "JSON object" in unprocessable.value.message


def test_the_check_runs_before_the_serializer_and_the_result_is_validated() -> None:
    seen: list[dict[str, Any]] = []
    assert validated_body(request_of({"name": "ab"}), Named, check=seen.append) == {"name": "ab"}
    assert seen == [{"name": "ab"}]

    def refuse(body: dict[str, Any]) -> None:
        raise ApiError("'extra' is not supported.", code="unsupported_parameter", param="extra")

    with pytest.raises(ApiError) as refused:
        validated_body(request_of({"name": "a-long-name", "extra": 1}), Named, check=refuse)
    assert refused.value.error_code == "unsupported_parameter"  # named before the serializer's error
    with pytest.raises(ValidationError):
        validated_body(request_of({"name": "a-long-name"}), Named)
