"""Gateway writes: API keys; the caller's side of admission (its policy picks the limits a
ticket carries; the limiter, attempts and waiting are in ``inference/admission``)."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.utils import timezone

from gateway.models import ApiKey, RateLimitPolicy, hash_key
from gateway.selectors import admission_subject
from inference.admission.ratelimit import Capacity, Quota, Ticket
from inference.admission.services import quota_peek, ticket_for

logger = logging.getLogger(__name__)

KEY_PREFIX = "sk-sl-"
VISIBLE_CHARS = 12


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str  # shown once; not stored


def apikey_create(
    *,
    user: User,
    name: str = "",
    expires_at: datetime | None = None,
    policy: RateLimitPolicy | None = None,
) -> IssuedKey:
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=raw_key[:VISIBLE_CHARS],
        key_hash=hash_key(raw_key),
        expires_at=expires_at,
        policy=policy,
    )
    return IssuedKey(api_key=api_key, raw_key=raw_key)


def apikey_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def apikey_touch(*, api_key: ApiKey, now: datetime | None = None) -> None:
    """Record use, at most once a minute per key (not a write per request)."""
    now = now or timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


# --- admission: the caller's policy (the limiter and its attempts are inference/admission) ----


def admission_ticket(
    *, user: User, api_key: ApiKey | None, model: str, capacity: Capacity, cost: int
) -> Ticket:
    limits, subject = admission_subject(user=user, api_key=api_key)
    return ticket_for(
        limits=limits, subject=subject, user_id=user.pk, model=model, capacity=capacity, cost=cost
    )


def quota_get(*, user: User, api_key: ApiKey | None) -> Quota:
    limits, subject = admission_subject(user=user, api_key=api_key)
    return quota_peek(limits=limits, subject=subject)
