"""Admission's services: the process's limiter, a request's ticket, its attempts (at once,
waiting blocked, or as events for a stream), giving up, the quota, and the release a job calls
when it ends (Django settings and the process's Redis client; `ratelimit` itself imports
neither). Below both the gateway and the job steps."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from django.conf import settings

from inference.admission.ratelimit import (
    Capacity,
    Decision,
    Limits,
    Outcome,
    Quota,
    RateLimiter,
    Ticket,
    poll_interval,
)
from inference.core.redis import async_redis, get_redis
from inference.observability.recording import record_admission

logger = logging.getLogger(__name__)

_limiter: RateLimiter | None = None
_limiter_lock = threading.Lock()


def get_limiter() -> RateLimiter:
    global _limiter
    with _limiter_lock:
        if _limiter is None or _limiter.client is not get_redis():
            _limiter = RateLimiter(get_redis(), waiter_ttl_s=settings.SLUICE_WAITER_TTL_S)
        return _limiter


def admission_release(*, grant: dict[str, Any], used_tokens: int, duration_s: float = 0.0) -> bool:
    """A job ended: free its leases, refund unused tokens. Never raises (the leases expire
    at the job's deadline anyway)."""
    if not grant or "lease" not in grant:
        return False
    try:
        return get_limiter().release(grant, used_tokens=used_tokens, duration_s=duration_s)
    except (redis.RedisError, KeyError, TypeError, ValueError):
        logger.warning("could not release admission %s", grant.get("lease"), exc_info=True)
        return False


def ticket_for(
    *, limits: Limits, subject: str, user_id: int, model: str, capacity: Capacity, cost: int
) -> Ticket:
    """A request's ticket: the caller's limits (its policy, resolved by the gateway) and the
    model's capacity."""
    return Ticket(
        subject=subject,
        model=model,
        cost=cost,
        limits=limits,
        capacity=capacity,
        fair_key=f"u{user_id}",
        # An admitted job holds its leases until it ends, at the latest at its deadline.
        lease_s=settings.SLUICE_JOB_TIMEOUT_S + 60,
    )


def quota_peek(*, limits: Limits, subject: str) -> Quota:
    """What is left of the caller's limits, without taking anything."""
    return get_limiter().peek(subject, limits)


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
