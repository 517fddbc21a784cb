"""Every error leaves Sluice in OpenAI's envelope:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "overloaded_error",
}


def envelope(
    message: str, *, status_code: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status_code, "invalid_request_error" if status_code < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


class ApiError(exceptions.APIException):
    """An error with an OpenAI ``code`` and ``param``."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.message = message
        self.error_code = code
        self.param = param
        self.extra_headers = headers or {}


def first_error(detail: Any, path: str = "") -> tuple[str, str]:
    """(param path, message) of the first error in DRF's nested error detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key in ("non_field_errors", "__all__"):
                return first_error(value, path)
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                return first_error(value, f"{path}[{key}]")  # list items are keyed by index
            return first_error(value, f"{path}.{key}" if path else str(key))
    if isinstance(detail, list) and detail:
        if all(isinstance(item, (str, exceptions.ErrorDetail)) for item in detail):
            return path, str(detail[0])
        for index, item in enumerate(detail):
            if item:
                return first_error(item, f"{path}[{index}]")
    return path, str(detail)


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        api_response = Response(
            envelope(exc.message, status_code=exc.status_code, code=exc.error_code, param=exc.param),
            status=exc.status_code,
        )
        for name, value in exc.extra_headers.items():
            api_response[name] = value
        return api_response
    handled = exception_handler(exc, context)
    if handled is None:
        logger.exception("unhandled error in %s", context.get("view"))
        return Response(
            envelope(
                "The server had an error while processing your request.",
                status_code=500,
                code="internal_error",
            ),
            status=500,
        )
    response: Response = handled
    code: str | None = None
    param: str | None = None
    if isinstance(exc, exceptions.ValidationError):
        param, detail = first_error(exc.detail)
        message = f"Invalid value for '{param}': {detail}" if param else detail
        param = param or None
        code = "invalid_value"
    elif isinstance(exc, exceptions.ParseError):
        message = f"We could not parse the JSON body of your request. ({exc.detail})"
        code = "invalid_json"
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        message = str(exc.detail)
        code = "invalid_api_key"
    elif isinstance(exc, exceptions.NotFound):
        message = str(exc.detail)
        code = "not_found"
    elif isinstance(exc, exceptions.Throttled):
        message = str(exc.detail)
        code = "rate_limit_exceeded"
    else:
        message = str(getattr(exc, "detail", exc))
    response.data = envelope(message, status_code=response.status_code, code=code, param=param)
    return response


def _wants_json(request: HttpRequest) -> bool:
    path = request.path
    return path.startswith(("/v1/", "/api/", "/generate", "/info", "/health", "/ws/")) or path == "/"


def not_found(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _wants_json(request):
        return JsonResponse(
            envelope(f"Unknown URL: {request.method} {request.path}", status_code=404, code="unknown_url"),
            status=404,
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Exception("not found"))


def server_error(request: HttpRequest) -> Any:
    if _wants_json(request):
        return JsonResponse(
            envelope(
                "The server had an error while processing your request.",
                status_code=500,
                code="internal_error",
            ),
            status=500,
        )
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)
