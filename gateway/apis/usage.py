"""``GET /api/v1/me/usage?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=day|model|key``: the caller's
requests, tokens and cost, counted as their jobs finished (UTC days, both ends included).
Costs are decimal strings, priced per version per 1M prompt / completion tokens; tokens
answered from the result cache are counted as ``cached_tokens`` and not charged as output."""

from __future__ import annotations

from datetime import date, timedelta

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.apis.base import GatewayApiView
from gateway.auth import request_user
from gateway.errors import ApiError
from inference.observability.usage import usage_summary

USER_GROUPS = ("day", "model", "key")
MAX_DAYS = 366
DEFAULT_DAYS = 30


def _day(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ApiError(f"'{name}' must be a date (YYYY-MM-DD).", param=name, code="invalid_value") from exc


class UsageGetApi(GatewayApiView):
    @extend_schema(
        parameters=[
            OpenApiParameter("from", str, description="first day, YYYY-MM-DD (default: 30 days ago)"),
            OpenApiParameter("to", str, description="last day, YYYY-MM-DD (default: today, UTC)"),
            OpenApiParameter("group_by", str, enum=list(USER_GROUPS)),
        ],
        responses={200: OpenApiResponse(description="usage per group and in total")},
        summary="Your usage and cost",
    )
    def get(self, request: Request) -> Response:
        today = timezone.now().date()
        end = _day(request, "to", today)
        start = _day(request, "from", end - timedelta(days=DEFAULT_DAYS - 1))
        if start > end:
            raise ApiError("'from' must not be after 'to'.", param="from", code="invalid_value")
        if (end - start).days >= MAX_DAYS:
            raise ApiError(f"At most {MAX_DAYS} days at once.", param="from", code="invalid_value")
        group_by = request.query_params.get("group_by", "day")
        if group_by not in USER_GROUPS:
            raise ApiError(
                f"'group_by' must be one of {', '.join(USER_GROUPS)}.", param="group_by", code="invalid_value"
            )
        data, total = usage_summary(user_id=request_user(request).pk, start=start, end=end, group_by=group_by)
        return Response(
            {
                "object": "usage",
                "from": start.isoformat(),
                "to": end.isoformat(),
                "group_by": group_by,
                "data": data,
                "total": total,
            }
        )
