"""An ASGI middleware that refuses request bodies above a limit before Django reads them.

Django's ASGI handler reads (spools) a whole body before a view runs, so a view cannot refuse
a 200 MB upload early. Here a declared ``Content-Length`` above the limit is answered 413 at
once, unread; a body sent without one (chunked) is counted as it arrives and cut off at the
limit. Knowledge-base uploads get their own, larger limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

from gateway.errors import ApiError, is_tgi_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_UPLOAD = re.compile(r"^/api/v1/knowledge-bases/[^/]+/documents/?$")
MULTIPART_SLACK = 1024 * 1024  # form fields and boundaries around the file


def limit_for(path: str) -> int:
    if _UPLOAD.match(path):
        return int(settings.SLUICE_MAX_UPLOAD_BYTES) + MULTIPART_SLACK
    return int(settings.SLUICE_MAX_REQUEST_BYTES)


async def _too_large(path: str, limit: int, send: Send) -> None:
    error = ApiError(
        f"The request body is larger than this route accepts ({limit} bytes).",
        status_code=413,
        code="request_too_large",
    )
    body = json.dumps(error.tgi_body() if is_tgi_path(path) else error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = limit_for(path)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _too_large(path, limit, send)
                    return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}  # Django stops reading and gives up
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the answer is the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if exceeded and not started:
            await _too_large(path, limit, send)
