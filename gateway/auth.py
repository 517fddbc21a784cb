"""Bearer API-key authentication (``Authorization: Bearer sk-sl-...``, or ``X-API-Key``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from gateway.models import ApiKey
from gateway.selectors import apikey_get_active
from gateway.services import VISIBLE_CHARS, apikey_touch
from inference.core.audit import auth_failure_record


def raw_key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    if x_api_key:
        return x_api_key.strip()
    return None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        authorization = request.META.get("HTTP_AUTHORIZATION")
        x_api_key = request.META.get("HTTP_X_API_KEY")
        if not authorization and not x_api_key:
            return None  # -> NotAuthenticated (401) from the permission check
        raw_key = raw_key_from_headers(authorization, x_api_key)
        if raw_key is None:
            auth_failure_record(key_prefix="", request=request._request)
            raise exceptions.AuthenticationFailed("Expected 'Authorization: Bearer <API key>'.")
        api_key = apikey_get_active(raw_key=raw_key)
        if api_key is None:
            auth_failure_record(key_prefix=raw_key[:VISIBLE_CHARS], request=request._request)
            # Never echo the key (DESIGN.md §4): a prefix is enough to recognise it.
            raise exceptions.AuthenticationFailed(f"Incorrect API key provided: {raw_key[:8]}****.")
        apikey_touch(api_key=api_key)
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="sluice"'


def request_user(request: Request) -> User:
    """The authenticated user of an API request (views require authentication)."""
    user = request.user
    if not isinstance(user, User):
        raise exceptions.NotAuthenticated()
    return user


def request_api_key(request: Request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None
