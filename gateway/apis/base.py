"""The base of every authenticated API view.

- ``x-ratelimit-*`` headers on every response (OpenAI's names): an admitted request's from its
  admission result (``gateway.admission.with_ratelimit``), any other's from the caller's quota.
- Errors as JSON even when the client asked for ``text/event-stream`` (negotiation picked
  the event-stream renderer, which only exists so that EventSource gets past DRF's 406).
- A streaming response leaves no database connection behind: Django's ASGI handler returns
  a request's connection only in ``response.close()``, which it skips when the stream raises,
  and the header lookup here may have opened one after the view closed its own.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.http import StreamingHttpResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.admission import has_ratelimit_headers, ratelimit_headers
from gateway.auth import request_api_key
from gateway.services import quota_get
from gateway.sse import EventStreamRenderer
from inference.core.db import release_connection

logger = logging.getLogger(__name__)


class GatewayApiView(APIView):
    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        # `Any`: DRF's stubs say Response, but streaming views return a StreamingHttpResponse.
        if isinstance(response, Response) and isinstance(
            getattr(request, "accepted_renderer", None), EventStreamRenderer
        ):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        response = super().finalize_response(request, response, *args, **kwargs)
        headers: dict[str, str] | None = None
        # `_user`, not `user`: reading `user` would re-run authentication after it failed.
        user = getattr(request, "_user", None)
        # A request that was admitted carries its admission's headers already (with_ratelimit);
        # any other authenticated response (a read, an error) shows the caller's quota now.
        if not has_ratelimit_headers(response) and isinstance(user, User):
            try:
                headers = ratelimit_headers(quota_get(user=user, api_key=request_api_key(request)))
            except (redis.RedisError, DatabaseError):
                logger.warning("rate-limit state unavailable for headers", exc_info=True)
        for name, value in (headers or {}).items():
            if name not in response:
                response[name] = value
        if isinstance(response, StreamingHttpResponse):
            release_connection()
        return response


class StreamingApiView(GatewayApiView):
    """A route that may answer with a stream: ``Accept: text/event-stream`` is fine."""

    renderer_classes = [JSONRenderer, EventStreamRenderer]
