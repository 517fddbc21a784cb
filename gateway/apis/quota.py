"""``GET /api/v1/me/quota``: the caller's policy, live remaining amounts and usage."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.admission import ratelimit_headers
from gateway.apis.base import GatewayApiView
from gateway.auth import request_api_key, request_user
from gateway.services import quota_get
from inference.admission.ratelimit import seconds_to_midnight


def _unlimited(value: int) -> int | None:
    return value or None


class QuotaGetApi(GatewayApiView):
    @extend_schema(
        responses={200: OpenApiResponse(description="limits (null: unlimited) and what is left of them")},
        summary="Your rate limits and what is left of them",
    )
    def get(self, request: Request) -> Response:
        api_key = request_api_key(request)
        quota = quota_get(user=request_user(request), api_key=api_key)
        limits = quota.limits
        budget = limits.daily_token_budget
        return Response(
            {
                "object": "quota",
                "policy": limits.policy,
                "scope": "api_key" if api_key is not None and api_key.policy_id else "user",
                "priority": limits.tier,
                "limits": {
                    "requests_per_minute": _unlimited(limits.requests_per_minute),
                    "tokens_per_minute": _unlimited(limits.tokens_per_minute),
                    "max_concurrent": _unlimited(limits.max_concurrent),
                    "daily_token_budget": _unlimited(budget),
                    "max_queue_wait_s": limits.max_queue_wait_s,
                    "burst_minutes": limits.burst,
                },
                "remaining": {
                    "requests": quota.remaining_requests,
                    "tokens": quota.remaining_tokens,
                    "concurrent": max(0, limits.max_concurrent - quota.concurrent)
                    if limits.max_concurrent
                    else None,
                    "daily_tokens": max(0, budget - quota.tokens_today) if budget else None,
                },
                "reset_s": {
                    "requests": round(quota.reset_requests_s, 3),
                    "tokens": round(quota.reset_tokens_s, 3),
                    "daily_tokens": round(seconds_to_midnight(), 1),
                },
                "usage": {"concurrent": quota.concurrent, "tokens_today": quota.tokens_today},
            },
            headers=ratelimit_headers(quota),
        )
