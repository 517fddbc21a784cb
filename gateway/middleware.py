"""Request ids: every request gets one, the client's ``X-Request-Id`` if it sent a usable
one (printable, at most 128 characters), else a fresh one. It is echoed as ``x-request-id``,
stored on the jobs the request creates and put on every log line written while serving it."""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("sluice_request_id", default="")
_USABLE = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
HEADER = "x-request-id"


def current_request_id() -> str:
    return _REQUEST_ID.get()


def request_id_for(request: HttpRequest) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _USABLE.match(given) else f"req_{uuid.uuid4().hex}"


class RequestIdMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(self.get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        request_id = request_id_for(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        token = _REQUEST_ID.set(request_id)
        try:
            response: HttpResponseBase = self.get_response(request)
        finally:
            _REQUEST_ID.reset(token)
        response[HEADER] = request_id
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_for(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        token = _REQUEST_ID.set(request_id)
        try:
            get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
            response = await get_response(request)
        finally:
            _REQUEST_ID.reset(token)
        response[HEADER] = request_id
        return response
