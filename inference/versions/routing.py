"""Which version of a served name runs a request: weighted, sticky per user, around open
circuit breakers (to the version's fallback when it has one)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

from inference.versions import health
from inference.versions.registry import ServedModel, all_versions, canonical_name, served_versions


def user_point(name: str, user_key: str) -> float:
    """A fixed point in [0, 1) per (served name, user): the same user lands on the same
    version for as long as the weights stay the same."""
    digest = hashlib.sha256(f"{name}\x00{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(versions: Sequence[ServedModel], point: float) -> ServedModel | None:
    """The version whose slice of [0, 1) (by traffic weight, in id order) holds ``point``."""
    weighted = sorted((v for v in versions if v.weight > 0), key=lambda v: (v.version_id or 0, v.label))
    total = sum(v.weight for v in weighted)
    if not weighted or total <= 0:
        return None
    target = point * total
    running = 0.0
    for version in weighted:
        running += version.weight
        if target < running:
            return version
    return weighted[-1]


def route_among(
    versions: Sequence[ServedModel],
    everything: Sequence[ServedModel],
    point: float,
    open_breakers: Collection[str],
) -> ServedModel | None:
    chosen = choose(versions, point)
    if chosen is None:
        return None
    if chosen.key not in open_breakers:
        return chosen
    if chosen.fallback_id is not None:
        fallback = next((v for v in everything if v.version_id == chosen.fallback_id), None)
        if fallback is not None and fallback.active and fallback.key not in open_breakers:
            return fallback
    healthy = [v for v in versions if v.key not in open_breakers]
    return choose(healthy, point)


def route(name: str | None, user_key: str) -> ServedModel | None:
    """The version for this user's request to ``name`` (None: no such name, or nothing that can
    take it)."""
    canonical = canonical_name(name)
    if canonical is None:
        return None
    versions = served_versions(canonical)
    broken = health.open_breakers([v.key for v in versions])
    return route_among(versions, all_versions(), user_point(canonical, user_key), broken)
