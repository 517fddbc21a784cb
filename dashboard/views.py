"""The operations console (staff only): the page, its live stream, and the recent jobs.

The page renders a first snapshot into unfold's cards and Chart.js charts; ``live.js`` then
follows ``/dashboard/stream`` (server-sent events, one snapshot per refresh) and updates the
charts in place (``Chart.getChart``) and the tables, with no reload.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from dashboard.scope import Scope
from dashboard.selectors import dashboard_snapshot, scopes
from inference.core.db import db, release_connection
from inference.models import Job
from inference.observability.timeseries import WINDOWS

CHARTS: tuple[tuple[str, str, str], ...] = (
    ("requests", "Requests / s by outcome", "req/s"),
    ("tokens", "Tokens / s", "tok/s"),
    ("ttft", "Time to first token", "ms"),
    ("itl", "Inter-token latency", "ms"),
    ("e2e", "End to end", "ms"),
    ("queue", "Queue time and admission wait", "ms"),
    ("sequences", "Sequences and batch size", ""),
    ("kv", "KV cache usage per worker", "%"),
    ("errors", "Error rate per version", "%"),
    ("cache", "Result-cache hit rate", "%"),
)


def _params(request: HttpRequest) -> tuple[str, Scope]:
    window = request.GET.get("window", "5m")
    return (window if window in WINDOWS else "5m"), Scope.parse(request.GET.get("scope", ""))


def _options(unit: str) -> str:
    """unfold's chart defaults, with a legend and a y axis (the live charts need both)."""
    return json.dumps(
        {
            "animation": False,
            "responsive": True,
            "maintainAspectRatio": False,
            "plugins": {
                "legend": {"display": True, "align": "end", "labels": {"boxWidth": 8, "boxHeight": 8}}
            },
            "scales": {
                "x": {"ticks": {"maxTicksLimit": 8, "color": "#9ca3af"}, "grid": {"display": False}},
                "y": {
                    "beginAtZero": True,
                    "ticks": {"color": "#9ca3af"},
                    "title": {"display": bool(unit), "text": unit},
                },
            },
            # Points drawn small: a series that has only its newest bucket yet is still visible.
            "datasets": {"line": {"borderWidth": 2, "pointRadius": 1.5, "tension": 0.2}},
        }
    )


@staff_member_required
def overview(request: HttpRequest) -> HttpResponse:
    window, scope = _params(request)
    snapshot = dashboard_snapshot(window=window, scope=scope)
    charts = [
        {
            "id": key,
            "title": title,
            "data": json.dumps(snapshot.get("charts", {}).get(key, {"labels": [], "datasets": []})),
            "options": _options(unit),
        }
        for key, title, unit in CHARTS
    ]
    recent = Job.objects.select_related("user", "model_version").order_by("-queued_at")[:25]
    return render(
        request,
        "dashboard/overview.html",
        {
            **admin.site.each_context(request),  # unfold's sidebar, branding and theme
            "title": "Operations",
            "window": window,
            "windows": list(WINDOWS),
            "scope": str(scope),
            "scopes": scopes(),
            "charts": charts,
            "snapshot": snapshot,
            "snapshot_json": json.dumps(snapshot, cls=DjangoJSONEncoder),
            "recent": recent,
            "refresh_s": settings.SLUICE_DASHBOARD_REFRESH_S,
        },
    )


async def _snapshots(window: str, scope: Scope) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    while True:
        snapshot: dict[str, Any] = await db(dashboard_snapshot, window=window, scope=scope)
        yield f"event: snapshot\ndata: {json.dumps(snapshot, cls=DjangoJSONEncoder)}\n\n".encode()
        await asyncio.sleep(settings.SLUICE_DASHBOARD_REFRESH_S)


@staff_member_required
def stream(request: HttpRequest) -> StreamingHttpResponse:
    """One snapshot per refresh, as server-sent events, for as long as the page is open. No
    database connection is held between two snapshots."""
    window, scope = _params(request)
    release_connection()
    response = StreamingHttpResponse(_snapshots(window, scope), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@staff_member_required
def snapshot(request: HttpRequest) -> HttpResponse:
    """The same snapshot as JSON (scripts, and clients that cannot follow a stream)."""
    window, scope = _params(request)
    data = dashboard_snapshot(window=window, scope=scope)
    return HttpResponse(json.dumps(data, cls=DjangoJSONEncoder), content_type="application/json")
