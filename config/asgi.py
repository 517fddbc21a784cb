"""ASGI entry point: HTTP through Django, WebSocket through Channels (run by uvicorn)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.core.asgi import get_asgi_application

# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from gateway.bodylimit import BodyLimitMiddleware  # noqa: E402
from gateway.websocket.origin import WebSocketOriginValidator  # noqa: E402
from gateway.websocket.routing import websocket_urlpatterns  # noqa: E402

http_app = django_asgi_app
if settings.SLUICE_SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        "http": BodyLimitMiddleware(http_app),
        "websocket": WebSocketOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
