"""The base of every authenticated API view: ``x-ratelimit-*`` headers on every response."""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.contrib.auth.models import User
from rest_framework.request import Request
from rest_framework.views import APIView

from gateway.admission import HEADERS_ATTR, ratelimit_headers

logger = logging.getLogger(__name__)


class GatewayApiView(APIView):
    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        # `Any`: DRF's stubs say Response, but streaming views return a StreamingHttpResponse.
        response = super().finalize_response(request, response, *args, **kwargs)
        headers: dict[str, str] | None = getattr(request, HEADERS_ATTR, None)
        # `_user`, not `user`: reading `user` would re-run authentication after it failed.
        user = getattr(request, "_user", None)
        if headers is None and isinstance(user, User):
            from gateway.auth import request_api_key
            from gateway.services import quota_get

            try:
                headers = ratelimit_headers(quota_get(user=user, api_key=request_api_key(request)))
            except redis.RedisError:
                logger.warning("rate-limit state unavailable for headers", exc_info=True)
        for name, value in (headers or {}).items():
            if name not in response:
                response[name] = value
        return response
