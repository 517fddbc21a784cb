"""WebSocket Origin check.

Channels' `AllowedHostsOriginValidator` refuses connections without an ``Origin`` header,
which non-browser clients (SDKs, curl-like tools) do not send, and it is off entirely when
``ALLOWED_HOSTS=['*']`` (DESIGN.md §4). Sluice authenticates sockets with API keys, not
cookies, so a missing Origin is fine; a present one must match the allowed hosts or
``SLUICE_WS_ALLOWED_ORIGINS``, and be the origin the socket was opened on (its host and port:
a page on another port of the same host is another site).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.http.request import split_domain_port
from django.utils.http import is_same_domain


class WebSocketOriginValidator:
    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = None
        for name, value in scope.get("headers", []):
            if name == b"origin":
                origin = value.decode("latin1")
                break
        host = next(
            (value.decode("latin1") for name, value in scope.get("headers", []) if name == b"host"), ""
        )
        if origin is not None and not self.allowed(origin, host):
            await receive()  # the websocket.connect message
            await send({"type": "websocket.close", "code": 4403})
            return None
        return await self.application(scope, receive, send)

    @staticmethod
    def allowed(origin: str, host_header: str = "") -> bool:
        """Listed in SLUICE_WS_ALLOWED_ORIGINS, or the page Sluice itself served: the origin's
        host and port are the ones the socket was opened on (its Host header), and that host is
        an allowed one. A page on another port of the same host is another origin."""
        if origin in settings.SLUICE_WS_ALLOWED_ORIGINS:
            return True
        parsed = urlparse(origin)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return False
        host, port = split_domain_port(parsed.netloc)
        served_host, served_port = split_domain_port(host_header.lower())
        default = "443" if parsed.scheme == "https" else "80"
        if not served_host or (host, port or default) != (served_host, served_port or default):
            return False
        patterns = [p for p in settings.ALLOWED_HOSTS if p != "*"]
        return any(is_same_domain(host, pattern) for pattern in patterns)
