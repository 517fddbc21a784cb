"""Gateway writes: API keys; admission (rate limits, waiting, release)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from gateway.models import ApiKey, RateLimitPolicy, hash_key
from gateway.selectors import admission_subject
from inference.admission.ratelimit import Capacity, Decision, Outcome, Quota, Ticket, poll_interval
from inference.admission.services import get_limiter
from inference.core.redis import async_redis
from inference.observability.recording import record_admission

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


# --- admission ------------------------------------------------------------------------


def admission_ticket(
    *, user: User, api_key: ApiKey | None, model: str, capacity: Capacity, cost: int
) -> Ticket:
    limits, subject = admission_subject(user=user, api_key=api_key)
    return Ticket(
        subject=subject,
        model=model,
        cost=cost,
        limits=limits,
        capacity=capacity,
        fair_key=f"u{user.pk}",
        # An admitted job holds its leases until it ends, at the latest at its deadline.
        lease_s=settings.SLUICE_JOB_TIMEOUT_S + 60,
    )


def _count(decision: Decision, ticket: Ticket) -> Decision:
    """Every final decision is counted; an admission also records how long it waited (zero
    when admitted at once, so the percentiles are over every admitted request)."""
    if decision.outcome is not Outcome.WAITING:
        record_admission(
            result=decision.outcome.value,
            policy=decision.limits.policy,
            model=ticket.model,
            waited_s=(time.monotonic() - ticket.started) if decision.outcome is Outcome.ADMITTED else None,
        )
    return decision


def admission_attempt(*, ticket: Ticket) -> Decision:
    return _count(get_limiter().attempt(ticket), ticket)


def admission_wait(*, ticket: Ticket, decision: Decision) -> Decision:
    """Block until a waiting request is admitted or refused (sync views)."""
    limiter = get_limiter()
    try:
        while decision.outcome is Outcome.WAITING:
            time.sleep(poll_interval(decision))
            decision = limiter.attempt(ticket)
    except BaseException:
        admission_abandon(ticket=ticket)
        raise
    return _count(decision, ticket)


async def admission_events(*, ticket: Ticket, decision: Decision) -> AsyncIterator[Decision]:
    """Each attempt of a waiting request, ending with the admitted or refused one (async
    entry points: SSE and WebSocket show the position and ETA as they change)."""
    limiter = get_limiter()
    client = async_redis()
    finished = False
    try:
        while decision.outcome is Outcome.WAITING:
            yield decision
            await asyncio.sleep(poll_interval(decision))
            decision = await limiter.attempt_async(ticket, client)
        finished = True
        yield _count(decision, ticket)
    finally:
        if not finished:  # the client went away while waiting
            await asyncio.shield(limiter.abandon_async(ticket, client))


def admission_abandon(*, ticket: Ticket) -> None:
    try:
        get_limiter().abandon(ticket)
    except redis.RedisError:
        logger.warning("could not abandon admission ticket %s", ticket.id, exc_info=True)


def quota_get(*, user: User, api_key: ApiKey | None) -> Quota:
    limits, subject = admission_subject(user=user, api_key=api_key)
    return get_limiter().peek(subject, limits)
