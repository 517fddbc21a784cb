"""Liveness and readiness (used by `make run`, tests and container health checks)."""

from __future__ import annotations

from typing import Any

from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.registry import served_models
from inference.selectors import worker_heartbeats
from inference.store import get_redis


class HealthzApi(APIView):
    permission_classes: list[Any] = []
    authentication_classes: list[Any] = []

    @extend_schema(responses={200: OpenApiResponse(description="the process is up")}, summary="Liveness")
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadinessApi(APIView):
    permission_classes: list[Any] = []
    authentication_classes: list[Any] = []

    @extend_schema(
        responses={200: OpenApiResponse(description="ready"), 503: OpenApiResponse(description="not ready")},
        summary="Readiness: database, Redis and a worker for every served model",
    )
    def get(self, request: Request) -> Response:
        checks: dict[str, Any] = {}
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            get_redis().ping()
            checks["redis"] = "ok"
            served = {model for beat in worker_heartbeats() for model in beat.get("models", [])}
            checks["models"] = {
                model.name: ("ok" if model.name in served else "no worker") for model in served_models()
            }
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        ready = (
            checks.get("database") == "ok"
            and checks.get("redis") == "ok"
            and all(v == "ok" for v in checks.get("models", {}).values())
        )
        return Response(
            {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
        )
