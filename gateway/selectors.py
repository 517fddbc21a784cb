"""Gateway reads: API keys, the rate-limit policy that applies to a request."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from gateway.models import ApiKey, RateLimitPolicy, hash_key
from inference.admission.ratelimit import Limits

UNLIMITED = Limits()


def apikey_get_active(*, raw_key: str) -> ApiKey | None:
    """The active key matching a presented secret (with its user), or None."""
    if not raw_key or len(raw_key) > 200:
        return None
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(key_hash=hash_key(raw_key), revoked_at__isnull=True)
        .first()
    )
    if api_key is None or not api_key.is_active or not api_key.user.is_active:
        return None
    return api_key


def apikey_still_active(*, api_key_id: int) -> bool:
    """Whether a key a connection authenticated with earlier may still be used."""
    api_key = ApiKey.objects.select_related("user").filter(pk=api_key_id, revoked_at__isnull=True).first()
    return api_key is not None and api_key.is_active and api_key.user.is_active


def limits_of(policy: RateLimitPolicy) -> Limits:
    return Limits(
        policy=policy.name,
        policy_id=policy.pk,
        requests_per_minute=policy.requests_per_minute,
        tokens_per_minute=policy.tokens_per_minute,
        max_concurrent=policy.max_concurrent,
        daily_token_budget=policy.daily_token_budget,
        max_queue_wait_s=policy.max_queue_wait_s,
        tier=policy.priority,
        burst=policy.burst,
    )


# (api key id, user id) -> (expires at, limits, subject, guards). Admin edits show within the
# TTL (SLUICE_POLICY_CACHE_S, 2 s by default) without a query per request.
_cache: dict[tuple[int | None, int], tuple[float, Limits, str, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


def policy_cache_clear() -> None:
    with _cache_lock:
        _cache.clear()


def admission_subject(*, user: User, api_key: ApiKey | None) -> tuple[Limits, str]:
    """The limits that apply to a request and the subject whose buckets they fill.

    A key with a policy of its own is its own subject (``k<id>``); otherwise the user is
    (``u<id>``: their keys share the user's buckets), under the user's policy or the default.
    """
    limits, subject, _ = _policy_for(user=user, api_key=api_key)
    return limits, subject


def policy_guards(*, user: User, api_key: ApiKey | None) -> tuple[str, dict[str, Any]]:
    """(policy name, its guards config) for a request: the same policy admission applies."""
    limits, _, guards = _policy_for(user=user, api_key=api_key)
    return limits.policy, guards


def _policy_for(*, user: User, api_key: ApiKey | None) -> tuple[Limits, str, dict[str, Any]]:
    key_id = api_key.pk if api_key is not None else None
    cache_key = (key_id, user.pk)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(cache_key)
    if hit is not None and hit[0] > now:
        return hit[1], hit[2], hit[3]
    policy: RateLimitPolicy | None = None
    subject = f"u{user.pk}"
    if api_key is not None and api_key.policy_id is not None:
        policy = RateLimitPolicy.objects.filter(pk=api_key.policy_id).first()
        if policy is not None:
            subject = f"k{api_key.pk}"
    if policy is None:
        policy = RateLimitPolicy.objects.filter(user_assignments__user=user).first()
    if policy is None:
        policy = RateLimitPolicy.objects.filter(is_default=True).first()
    limits = limits_of(policy) if policy is not None else UNLIMITED
    guards = dict(policy.guards or {}) if policy is not None else {}
    with _cache_lock:
        _cache[cache_key] = (now + settings.SLUICE_POLICY_CACHE_S, limits, subject, guards)
    return limits, subject, guards


def apikeys_of(*, user: User, include_revoked: bool = False) -> list[ApiKey]:
    keys = ApiKey.objects.select_related("policy").filter(user=user)
    if not include_revoked:
        keys = keys.filter(revoked_at__isnull=True)
    return list(keys.order_by("-created_at"))


def policy_of_user(*, user: User) -> RateLimitPolicy | None:
    """The user's own policy (their assignment, else the default); ``None``: unlimited."""
    return (
        RateLimitPolicy.objects.filter(user_assignments__user=user).first()
        or RateLimitPolicy.objects.filter(is_default=True).first()
    )


LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent", "daily_token_budget")


def policy_within(policy: RateLimitPolicy, ceiling: RateLimitPolicy) -> bool:
    """Whether ``policy`` grants nothing beyond ``ceiling``: no higher priority, no longer
    queue wait, no larger burst, and no limit above it (0, unlimited, is above every number)."""
    if policy.priority > ceiling.priority or policy.max_queue_wait_s > ceiling.max_queue_wait_s:
        return False
    if policy.burst > ceiling.burst:
        return False
    for name in LIMIT_FIELDS:
        mine, theirs = int(getattr(policy, name)), int(getattr(ceiling, name))
        if theirs and (not mine or mine > theirs):
            return False
    return True
