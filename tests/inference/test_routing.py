"""Version routing: weighted split, stickiness per user, breakers and fallbacks (pure)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from inference.registry import ServedModel
from inference.routing import choose, route_among, user_point


def version(
    version_id: int, weight: int, *, status: str = "stable", fallback: int | None = None
) -> ServedModel:
    return ServedModel(
        name="m",
        path=Path("/models/m"),
        version_id=version_id,
        label=f"v{version_id}",
        status=status,
        weight=weight,
        fallback_id=fallback,
    )


@pytest.mark.parametrize("canary_weight", [10, 25, 50])
def test_split_follows_the_weights_within_five_percent(canary_weight: int) -> None:
    stable, canary = version(1, 100 - canary_weight), version(2, canary_weight, status="canary")
    picks = Counter(choose([stable, canary], user_point("m", f"user{i}")).label for i in range(1000))  # type: ignore[union-attr]
    share = picks["v2"] / 1000
    print(f"\ncanary weight {canary_weight}%: {share:.1%} of 1000 users")
    assert abs(share - canary_weight / 100) <= 0.05


def test_sticky_per_user_while_weights_hold() -> None:
    versions = [version(1, 90), version(2, 10, status="canary")]
    for i in range(200):
        point = user_point("m", f"user{i}")
        assert len({choose(versions, point) for _ in range(3)}) == 1
        # Listing order does not matter; the same user gets the same version.
        assert choose(list(reversed(versions)), point) == choose(versions, point)
    # Raising the canary's share only moves users onto it, never off it.
    raised = [version(1, 70), version(2, 30, status="canary")]
    for i in range(200):
        point = user_point("m", f"user{i}")
        if choose(versions, point).label == "v2":  # type: ignore[union-attr]
            assert choose(raised, point).label == "v2"  # type: ignore[union-attr]


def test_weight_zero_gets_nothing() -> None:
    versions = [version(1, 100), version(2, 0, status="canary")]
    assert {choose(versions, user_point("m", f"u{i}")).label for i in range(300)} == {"v1"}  # type: ignore[union-attr]


def test_open_breaker_sends_traffic_to_the_fallback_else_the_healthy_rest() -> None:
    fallback = version(3, 0)
    broken = version(1, 100, fallback=3)
    other = version(2, 0)
    everything = [broken, other, fallback]
    point = user_point("m", "someone")
    assert route_among([broken, other, fallback], everything, point, open_breakers=set()) == broken
    assert route_among([broken, other, fallback], everything, point, open_breakers={"m@v1"}) == fallback
    # Without a usable fallback: another version with traffic, else nothing.
    healthy = version(4, 50)
    assert route_among([broken, healthy], [broken, healthy], point, {"m@v1"}) == healthy
    assert route_among([broken], [broken, fallback], point, {"m@v1", "m@v3"}) is None
