"""The process's limiter, and the release a job calls when it ends (Django settings and the
process's Redis client; `ratelimit` itself imports neither)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from django.conf import settings

from inference.admission.ratelimit import RateLimiter
from inference.core.redis import get_redis

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
