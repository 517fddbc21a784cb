"""``GET /metrics`` (Prometheus), protected: it describes the whole fleet's traffic.

Allowed when the request carries ``Authorization: Bearer <SLUICE_METRICS_TOKEN>`` (when a token
is configured), or comes from an address in ``SLUICE_METRICS_ALLOWED_NETWORKS`` (loopback by
default, where `make run` and a sidecar scraper live). Everything else gets 403. Series are
labelled by model, version, policy and outcome, never by user or key.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView

from gateway.errors import ApiError


def _allowed(request: HttpRequest) -> bool:
    token = settings.SLUICE_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(net, strict=False) for net in settings.SLUICE_METRICS_ALLOWED_NETWORKS
    )


def metrics(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    if not _allowed(request):
        error = ApiError(
            "Metrics need the metrics token (Authorization: Bearer ...) or an allowed address.",
            status_code=403,
            code="forbidden",
        )
        return JsonResponse(error.body(), status=403)
    return ExportToDjangoView(request)
