"""Liveness and readiness (used by `make run`, tests, load balancers and container checks).

``/readyz`` answers within a couple of seconds whatever is down: the database is checked with
its own short-timeout connection (not the pool, which waits for a connection through an
outage), Redis with its own short-timeout client. Readiness is per served model: the
gateway is ready when its stores answer and at least one model has a worker;
``/readyz?model=<name>`` asks about one model. Crash loops that `make run`'s supervisor
reports are shown too.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import redis
from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.core.keys import SUPERVISOR_KEY
from inference.versions.fleet import worker_heartbeats
from inference.versions.registry import served_models

PROBE_TIMEOUT_S = 2
HEARTBEAT_STALE_S = 15


class HealthzApi(APIView):
    permission_classes: list[Any] = []
    authentication_classes: list[Any] = []

    @extend_schema(responses={200: OpenApiResponse(description="the process is up")}, summary="Liveness")
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


def _database() -> str:
    params = dict(connection.get_connection_params())
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params["connect_timeout"] = PROBE_TIMEOUT_S
    try:
        with psycopg.connect(**params) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
    )


class ReadinessApi(APIView):
    permission_classes: list[Any] = []
    authentication_classes: list[Any] = []

    @extend_schema(
        parameters=[OpenApiParameter("model", str, description="readiness of this served model only")],
        responses={200: OpenApiResponse(description="ready"), 503: OpenApiResponse(description="not ready")},
        summary="Readiness: database, Redis, and a worker per served model",
    )
    def get(self, request: Request) -> Response:
        checks: dict[str, Any] = {"database": _database()}
        models: dict[str, str] = {}
        client = _redis()
        try:
            client.ping()
            checks["redis"] = "ok"
            now = time.time()
            beats = [b for b in worker_heartbeats(client) if now - float(b.get("ts", 0)) < HEARTBEAT_STALE_S]
            served = {model for beat in beats for model in beat.get("models", [])}
            failing = {
                v["name"]: v["error"] for beat in beats for v in beat.get("versions", []) if v.get("error")
            }
            raw: Any = client.get(SUPERVISOR_KEY)
            if raw:
                checks["supervisor"] = json.loads(raw).get("processes", {})
        except redis.RedisError as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
            served, failing = set(), {}
        finally:
            client.close()
        if checks["database"] == "ok":
            try:
                names = [model.name for model in served_models()]
            except Exception:
                names = [settings.SLUICE_MODEL_NAME]
            finally:
                connection.close()
            for name in names:
                if name in served:
                    models[name] = "ok"
                elif name in failing:
                    models[name] = f"load failed: {failing[name][:200]}"
                else:
                    models[name] = "no worker"
        checks["models"] = models
        stores = checks["database"] == "ok" and checks["redis"] == "ok"
        wanted = request.query_params.get("model")
        if wanted:
            ready = stores and models.get(wanted) == "ok"
        else:
            ready = stores and any(state == "ok" for state in models.values())
        return Response(
            {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
        )
