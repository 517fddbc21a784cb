from __future__ import annotations

from django.urls import path

from gateway.websocket.consumers import JobConsumer

websocket_urlpatterns = [
    path("ws/v1/jobs/", JobConsumer.as_asgi()),
]
