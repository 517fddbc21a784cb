"""Errors in each protocol's own envelope (DESIGN.md §5).

- OpenAI routes (``/v1/...``) and Sluice's own API (``/api/...``):
  ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's ``type`` values:
  ``invalid_request_error`` for every 4xx but 429, ``requests`` / ``tokens`` /
  ``insufficient_quota`` for 429 (as OpenAI tells request and token limits apart),
  ``server_error`` for 5xx.
- TGI routes (``/generate``, ``/generate_stream``, ``/``, ``/info``, ``/health``):
  ``{"error": "<message>", "error_type": ...}`` with TGI's ``error_type`` values
  (``validation``, ``overloaded``, ``generation``, ``incomplete_generation``), which
  ``text_generation`` and ``huggingface_hub`` map to their error classes.

Views raise `ApiError` (or DRF's exceptions); each protocol's base view picks its handler.
URLs nobody routes answer 404 in the envelope of the protocol that owns the prefix: a JSON body
whatever DEBUG says (a catch-all route, not Django's 404 page), but under the admin's, the
console's and the static files' prefixes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


def openai_type(status_code: int, code: str | None = None) -> str:
    if status_code == 429:
        if code in ("daily_budget_exceeded", "insufficient_quota"):
            return "insufficient_quota"
        if code == "tokens_limit_exceeded":
            return "tokens"
        return "requests"
    return "invalid_request_error" if status_code < 500 else "server_error"


def envelope(
    message: str,
    *,
    status_code: int,
    code: str | None = None,
    param: str | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type or openai_type(status_code, code),
            "param": param,
            "code": code,
        }
    }


#: HTTP status -> TGI error_type (what TGI's router answers with that status).
_TGI_TYPES = {
    400: "validation",
    404: "validation",
    405: "validation",
    413: "validation",
    415: "validation",
    422: "validation",
    424: "generation",
    429: "overloaded",
    500: "generation",
    503: "overloaded",
    504: "incomplete_generation",
}


def tgi_envelope(message: str, *, status_code: int, error_type: str | None = None) -> dict[str, Any]:
    """TGI has no authentication: a 401/403 carries no ``error_type``, so that clients raise
    their plain HTTP error for it rather than a TGI error class that would mislead."""
    if error_type is None and status_code in (401, 403):
        return {"error": message}
    return {"error": message, "error_type": error_type or _TGI_TYPES.get(status_code, "generation")}


class ApiError(exceptions.APIException):
    """An error with an OpenAI ``code`` and ``param`` (each protocol renders it its way)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        tgi_type: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.openai_type = type
        self.status_code = status_code
        self.message = message
        self.error_code = code
        self.param = param
        self.extra_headers = headers or {}
        self.tgi_type = tgi_type

    def body(self) -> dict[str, Any]:
        return envelope(
            self.message,
            status_code=self.status_code,
            code=self.error_code,
            param=self.param,
            type=self.openai_type,
        )

    def tgi_body(self) -> dict[str, Any]:
        return tgi_envelope(self.message, status_code=self.status_code, error_type=self.tgi_type)


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


def as_api_error(exc: Exception, context: dict[str, Any]) -> ApiError:
    """Any exception a view raised, as an `ApiError` (unexpected ones are logged, and 500)."""
    if isinstance(exc, ApiError):
        return exc
    outage = store_outage(exc)
    if outage is not None:
        return outage
    if isinstance(exc, RequestDataTooBig):
        return ApiError(
            "The request body is too large.", status_code=413, code="request_too_large", headers={}
        )
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return ApiError(str(exc) or "Too many fields in the request.", code="too_many_fields")
    handled = exception_handler(exc, context)
    if handled is None:
        logger.exception("unhandled error in %s", context.get("view"))
        return ApiError(
            "The server had an error while processing your request.",
            status_code=500,
            code="internal_error",
        )
    headers = {k: v for k, v in handled.items() if k.lower() in ("www-authenticate", "retry-after", "allow")}
    status_code = handled.status_code
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
    elif isinstance(exc, exceptions.MethodNotAllowed):
        message = str(exc.detail)
        code = "method_not_allowed"
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        message = str(exc.detail)
        code = "unsupported_media_type"
    elif isinstance(exc, exceptions.NotAcceptable):
        message = str(exc.detail)
        code = "not_acceptable"
    elif isinstance(exc, exceptions.Throttled):
        message = str(exc.detail)
        code = "rate_limit_exceeded"
    elif isinstance(exc, exceptions.PermissionDenied):
        message = str(exc.detail)
        code = "permission_denied"
    else:
        message = str(getattr(exc, "detail", exc))
    return ApiError(message, status_code=status_code, code=code, param=param, headers=headers)


#: Seconds a client is told to wait when Postgres or Redis is unreachable.
OUTAGE_RETRY_AFTER_S = 5


def store_outage(exc: BaseException) -> ApiError | None:
    """An unreachable Postgres or Redis is an outage (503, retry later), not a bug (500)."""
    store = None
    if isinstance(exc, OperationalError | InterfaceError):
        store = "database"
    elif isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError) or (
        isinstance(exc, redis.ResponseError) and str(exc).startswith(("LOADING", "READONLY", "MASTERDOWN"))
    ):
        store = "queue store (Redis)"
    if store is None:
        return None
    logger.warning("%s unavailable: %s: %s", store, type(exc).__name__, exc)
    return ApiError(
        f"The {store} is temporarily unavailable. Retry after the time in the Retry-After header.",
        status_code=503,
        code="service_unavailable",
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
        tgi_type="overloaded",
    )


def _respond(error: ApiError, body: dict[str, Any]) -> Response:
    response = Response(body, status=error.status_code)
    for name, value in error.extra_headers.items():
        response[name] = value
    return response


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    error = as_api_error(exc, context)
    return _respond(error, error.body())


def tgi_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    error = as_api_error(exc, context)
    return _respond(error, error.tgi_body())


TGI_PATHS = ("/generate", "/generate_stream", "/info", "/health")


def is_tgi_path(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p + "/") for p in TGI_PATHS)


def api_owned(path: str) -> bool:
    """Paths whose errors are JSON (the API's), not HTML pages (the admin's, the console's)."""
    return is_tgi_path(path) or path.startswith(("/v1/", "/api/", "/ws/")) or path in ("/v1", "/api")


def json_error(request: HttpRequest, error: ApiError) -> JsonResponse:
    body = error.tgi_body() if is_tgi_path(request.path) else error.body()
    response = JsonResponse(body, status=error.status_code)
    for name, value in error.extra_headers.items():
        response[name] = value
    return response


def unknown_url(request: HttpRequest, exception: Exception | None = None, **kwargs: Any) -> JsonResponse:
    message = f"Unknown URL: {request.method} {request.path}"
    if not request.path.startswith(("/v1", "/api", "/ws", "/healthz", "/readyz")) and not is_tgi_path(
        request.path
    ):
        # The root belongs to TGI's protocol, whose clients read {"error": ...}; without an
        # error_type, text_generation and huggingface_hub raise their not-found error for it.
        return JsonResponse({"error": message}, status=404)
    return json_error(request, ApiError(message, status_code=404, code="unknown_url"))


def not_found(request: HttpRequest, exception: Exception | None = None) -> Any:
    if api_owned(request.path):
        return unknown_url(request)
    return defaults.page_not_found(request, exception or Exception("not found"))


def server_error(request: HttpRequest) -> Any:
    outage = store_outage(sys.exc_info()[1] or Exception())
    if outage is not None and api_owned(request.path):
        return json_error(request, outage)
    if api_owned(request.path):
        return json_error(
            request,
            ApiError(
                "The server had an error while processing your request.",
                status_code=500,
                code="internal_error",
            ),
        )
    return defaults.server_error(request)
