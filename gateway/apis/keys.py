"""Self-service API keys: ``GET/POST /api/v1/me/keys``, ``DELETE /api/v1/me/keys/{id}``.

A new key is shown once, in the creation's answer (only its hash is stored). Its policy, if
it names one, may be no higher than the caller's own: no higher priority and no limit above
the caller's (an unlimited amount is the highest). A revoked key answers 401 on its next
request (keys are looked up on every request; sockets re-check within
SLUICE_WS_KEY_CHECK_S). Another user's key id is a 404.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.apis.base import GatewayApiView
from gateway.auth import request_user
from gateway.errors import ApiError
from gateway.fields import StrictCharField
from gateway.models import ApiKey, RateLimitPolicy
from gateway.selectors import apikeys_of, policy_of_user, policy_within
from gateway.services import apikey_create, apikey_revoke
from inference.core.audit import audit_created, audit_record
from inference.core.models import AuditAction

MAX_KEYS_PER_USER = 100


def key_representation(api_key: ApiKey) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": api_key.pk,
        "object": "api_key",
        "name": api_key.name,
        "prefix": api_key.prefix,
        "policy": api_key.policy.name if api_key.policy is not None else None,
        "created_at": iso(api_key.created_at),
        "last_used_at": iso(api_key.last_used_at),
        "expires_at": iso(api_key.expires_at),
        "revoked_at": iso(api_key.revoked_at),
        "active": api_key.is_active,
    }


class KeyCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    policy = StrictCharField(max_length=100, required=False, allow_null=True)


def _policy_allowed(user: User, name: str | None) -> RateLimitPolicy | None:
    if not name:
        return None
    policy = RateLimitPolicy.objects.filter(name=name).first()
    if policy is None:
        raise ApiError(f"No policy named '{name}'.", param="policy", code="invalid_value")
    ceiling = policy_of_user(user=user)
    if ceiling is not None and not policy_within(policy, ceiling):
        raise ApiError(
            f"Policy '{name}' is higher than your own ('{ceiling.name}'): a key's policy may not raise "
            "your priority or any of your limits.",
            status_code=status.HTTP_403_FORBIDDEN,
            code="policy_not_allowed",
            param="policy",
        )
    return policy


class ApiKeyListApi(GatewayApiView):
    @extend_schema(
        parameters=[OpenApiParameter("include_revoked", bool)],
        responses={200: OpenApiResponse(description="your API keys (prefixes only)")},
        summary="List your API keys",
    )
    def get(self, request: Request) -> Response:
        include_revoked = request.query_params.get("include_revoked", "").lower() in ("1", "true", "yes")
        keys = apikeys_of(user=request_user(request), include_revoked=include_revoked)
        return Response({"object": "list", "data": [key_representation(k) for k in keys]})


class ApiKeyCreateApi(GatewayApiView):
    @extend_schema(
        request=KeyCreateSerializer,
        responses={201: OpenApiResponse(description="the new key; `key` is shown this once")},
        summary="Create an API key",
    )
    def post(self, request: Request) -> Response:
        user = request_user(request)
        serializer = KeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        expires_at = data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise ApiError("'expires_at' must be in the future.", param="expires_at", code="invalid_value")
        policy = _policy_allowed(user, data.get("policy"))
        if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_KEYS_PER_USER:
            raise ApiError(
                f"You have {MAX_KEYS_PER_USER} active keys; revoke one first.",
                code="too_many_keys",
                status_code=409,
            )
        issued = apikey_create(user=user, name=data["name"], expires_at=expires_at, policy=policy)
        audit_created(issued.api_key, actor=user, via="api", request=request._request)
        return Response(
            {**key_representation(issued.api_key), "key": issued.raw_key}, status=status.HTTP_201_CREATED
        )


class ApiKeyCollectionApi(ApiKeyListApi, ApiKeyCreateApi):
    pass


class ApiKeyRevokeApi(GatewayApiView):
    @extend_schema(
        responses={
            200: OpenApiResponse(description="revoked"),
            404: OpenApiResponse(description="no such key"),
        },
        summary="Revoke one of your API keys (effective at once)",
    )
    def delete(self, request: Request, key_id: str) -> Response:
        user = request_user(request)
        api_key = (
            ApiKey.objects.select_related("policy").filter(pk=int(key_id), user=user).first()
            # ASCII digits only: "³" is a digit to str.isdigit() and not to int().
            if key_id.isascii() and key_id.isdigit() and len(key_id) < 19
            else None
        )
        if api_key is None:
            raise ApiError(
                f"No API key with id '{key_id}'.", status_code=status.HTTP_404_NOT_FOUND, code="not_found"
            )
        if api_key.revoked_at is None:
            apikey_revoke(api_key=api_key)
            audit_record(
                action=AuditAction.REVOKED, obj=api_key, actor=user, via="api", request=request._request
            )
        return Response(
            {"id": api_key.pk, "object": "api_key", "deleted": True, **key_representation(api_key)}
        )
