"""Request bodies: every route's body is a JSON object, validated by its route's serializer.

One helper for every view (the check was copied into eight). A body that is not an object
(an array, a string) is refused before the serializer sees it, in the route's envelope: the
error factory is the route's (TGI's answers 422 in its own shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rest_framework import serializers
from rest_framework.request import Request

from gateway.errors import ApiError

ErrorFactory = Callable[[str, str], Exception]


def _invalid(message: str, code: str) -> Exception:
    return ApiError(message, code=code)


def body_object(request: Request, *, error: ErrorFactory = _invalid) -> dict[str, Any]:
    """The parsed body, which must be a JSON object."""
    if not isinstance(request.data, dict):
        raise error("The request body must be a JSON object.", "invalid_json")
    return request.data


def validated_body(
    request: Request,
    serializer_class: type[serializers.Serializer],
    *,
    error: ErrorFactory = _invalid,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The body as a JSON object, through ``check`` (unknown and refused parameters, named),
    then the serializer (its errors answer 400 through the exception handler)."""
    data = body_object(request, error=error)
    if check is not None:
        check(data)
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
