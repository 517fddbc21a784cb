"""ASGI entry point: HTTP through Django, WebSocket through Channels (run by uvicorn)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from gateway.bodylimit import BodyLimitMiddleware  # noqa: E402
from gateway.websocket.origin import WebSocketOriginValidator  # noqa: E402
from gateway.websocket.routing import websocket_urlpatterns  # noqa: E402

# Static files are served by ServeStatic's middleware (config/settings/base.py).
application = ProtocolTypeRouter(
    {
        "http": BodyLimitMiddleware(django_asgi_app),
        "websocket": WebSocketOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
