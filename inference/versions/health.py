"""Model-version health: outcomes over a sliding window, circuit breakers, and the automatic
canary rollback. It lives in Redis: every worker records its jobs' outcomes, every web process
reads the breakers when routing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from inference.core.keys import breaker_key, breaker_opened_key
from inference.core.keys import version_stats_key as stats_key
from inference.core.redis import get_redis
from inference.models import EventKind, ModelVersion, VersionStatus
from inference.versions.lifecycle import version_event
from inference.versions.registry import ServedModel, all_versions, registry_changed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowStats:
    samples: int
    errors: int
    ttft_p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.samples if self.samples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "ttft_p99_ms": None if self.ttft_p99_ms is None else round(self.ttft_p99_ms, 1),
        }


def version_stats(version_key: str, *, since_ms: int = 0) -> WindowStats:
    client = get_redis()
    oldest = max(since_ms, int((time.time() - settings.SLUICE_VERSION_WINDOW_S) * 1000))
    members: Any = client.zrangebyscore(stats_key(version_key), oldest, "+inf")
    errors = 0
    ttfts: list[float] = []
    for raw in members:
        _, _, ok, ttft = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(":")
        errors += ok == "0"
        if ttft:
            ttfts.append(float(ttft))
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))] if ttfts else None
    return WindowStats(samples=len(members), errors=errors, ttft_p99_ms=p99)


def version_record_outcome(*, version: ServedModel, ok: bool, ttft_s: float | None = None) -> None:
    """One finished job of this version (cancellations and cache hits are not recorded)."""
    now_ms = int(time.time() * 1000)
    member = f"{now_ms}:{uuid.uuid4().hex[:8]}:{int(ok)}:{'' if ttft_s is None else round(ttft_s * 1000, 1)}"
    key = stats_key(version.key)
    window = settings.SLUICE_VERSION_WINDOW_S
    try:
        pipe = get_redis().pipeline()
        pipe.zadd(key, {member: now_ms})
        pipe.zremrangebyscore(key, "-inf", now_ms - window * 1000)
        pipe.expire(key, int(window) + 60)
        pipe.execute()
        if version.version_id is None:
            return
        # A canary worse than its stable version is rolled back (weight 0) before anything else.
        if version.status == VersionStatus.CANARY and version.weight > 0 and canary_check(version):
            return
        if not ok:
            breaker_check(version)
    except Exception:
        logger.warning("could not record the outcome of %s", version.key, exc_info=True)


def open_breakers(version_keys: Sequence[str]) -> set[str]:
    if not version_keys:
        return set()
    values = get_redis().mget([breaker_key(k) for k in version_keys])
    return {k for k, v in zip(version_keys, values, strict=True) if v}


def breaker_check(version: ServedModel) -> bool:
    """Open the breaker (no new traffic for the cool-down) when the error rate crosses the
    threshold. True if this call opened it."""
    client = get_redis()
    # After a cool-down the breaker is half-open: new traffic again, judged only on outcomes
    # since it last opened (the window itself is kept: the canary check reads it).
    opened: Any = client.get(breaker_opened_key(version.key))
    stats = version_stats(version.key, since_ms=int(opened or 0))
    if (
        stats.samples < settings.SLUICE_BREAKER_MIN_SAMPLES
        or stats.error_rate < settings.SLUICE_BREAKER_ERROR_RATE
    ):
        return False
    cooldown = settings.SLUICE_BREAKER_COOLDOWN_S
    if not client.set(breaker_key(version.key), "1", nx=True, ex=int(cooldown)):
        return False
    client.set(
        breaker_opened_key(version.key),
        int(time.time() * 1000),
        ex=int(settings.SLUICE_VERSION_WINDOW_S) + 60,
    )
    fallback = f"; its traffic goes to version {version.fallback_id}" if version.fallback_id else ""
    version_event(
        version.version_id,
        EventKind.BREAKER_OPEN,
        f"error rate {stats.error_rate:.0%} over {stats.samples} jobs >= "
        f"{settings.SLUICE_BREAKER_ERROR_RATE:.0%}: out of routing for {cooldown:.0f}s{fallback}",
        stats.as_dict(),
        actor="auto",
    )
    return True


def canary_check(canary: ServedModel) -> bool:
    """Roll a canary back (weight 0) when it does worse than the stable version of its name.
    True if this call rolled it back."""
    min_samples = settings.SLUICE_VERSION_MIN_SAMPLES
    mine = version_stats(canary.key)
    if mine.samples < min_samples:
        return False
    stables = [v for v in all_versions() if v.name == canary.name and v.status == VersionStatus.STABLE]
    baseline = WindowStats(0, 0, None)
    for stable in stables:
        stats = version_stats(stable.key)
        if stats.samples >= baseline.samples:
            baseline = stats
    reasons = []
    base_rate = baseline.error_rate if baseline.samples >= min_samples else 0.0
    if mine.error_rate > base_rate + settings.SLUICE_CANARY_ERROR_MARGIN:
        reasons.append(f"error rate {mine.error_rate:.1%} vs stable {base_rate:.1%}")
    if (
        baseline.samples >= min_samples
        and mine.ttft_p99_ms is not None
        and baseline.ttft_p99_ms is not None
        and mine.ttft_p99_ms > baseline.ttft_p99_ms * (1 + settings.SLUICE_CANARY_TTFT_MARGIN)
    ):
        reasons.append(f"TTFT p99 {mine.ttft_p99_ms:.0f} ms vs stable {baseline.ttft_p99_ms:.0f} ms")
    if not reasons or canary.version_id is None:
        return False
    with transaction.atomic():
        rolled = ModelVersion.objects.filter(
            pk=canary.version_id, status=VersionStatus.CANARY, traffic_weight__gt=0
        ).update(traffic_weight=0)
        if rolled:
            version_event(
                canary.version_id,
                EventKind.ROLLED_BACK,
                "automatic rollback: " + "; ".join(reasons) + " (window "
                f"{settings.SLUICE_VERSION_WINDOW_S:.0f}s, {mine.samples} canary jobs)",
                {"canary": mine.as_dict(), "stable": baseline.as_dict()},
                actor="auto",
            )
    registry_changed()
    return bool(rolled)


def versions_health_check() -> int:
    """Periodic (the reconciler): every canary with traffic, against its stable version."""
    return sum(canary_check(v) for v in all_versions() if v.status == VersionStatus.CANARY and v.weight > 0)
