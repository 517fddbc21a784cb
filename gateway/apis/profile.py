"""``/api/v1/me/profile``: attributes that Sluice puts into your system prompt (language,
role, interests), through a fixed server-side template."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.apis.base import GatewayApiView
from gateway.auth import request_user
from gateway.bodies import validated_body
from gateway.fields import StrictCharField
from inference.chat.selectors import profile_attributes
from inference.chat.services import profile_update


class ProfileSerializer(serializers.Serializer):
    language = StrictCharField(required=False, allow_blank=True, max_length=64)
    role = StrictCharField(required=False, allow_blank=True, max_length=120)
    interests = StrictCharField(required=False, allow_blank=True, max_length=500)


def _body(attributes: dict[str, str]) -> dict[str, Any]:
    return {"object": "profile", **{k: attributes.get(k, "") for k in ("language", "role", "interests")}}


class ProfileGetApi(GatewayApiView):
    @extend_schema(responses={200: OpenApiResponse(description="your profile")})
    def get(self, request: Request) -> Response:
        return Response(_body(profile_attributes(user_id=request_user(request).pk)))


class ProfileUpdateApi(GatewayApiView):
    @extend_schema(request=ProfileSerializer, responses={200: OpenApiResponse(description="your profile")})
    def patch(self, request: Request) -> Response:
        profile = profile_update(user=request_user(request), **validated_body(request, ProfileSerializer))
        return Response(
            _body({"language": profile.language, "role": profile.role, "interests": profile.interests})
        )


class ProfileApi(ProfileGetApi, ProfileUpdateApi):
    """``/api/v1/me/profile``: get (GET), update (PATCH)."""
