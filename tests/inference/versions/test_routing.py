"""Version routing: weighted split, stickiness per user, breakers and fallbacks (pure), and a name added a moment ago."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from inference.versions.registry import ServedModel
from inference.versions.routing import choose, route_among, user_point


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


@pytest.mark.django_db
def test_a_name_added_a_moment_ago_is_known_at_once(settings: Any, demo_model_dir: Path) -> None:
    """Each process caches the version table; a name it does not know is looked up again
    (at most every 0.5 s) before the request is told the model does not exist."""
    from inference.models import ModelVersion
    from inference.versions import registry

    settings.SLUICE_REGISTRY_CACHE_S = 3600
    registry.registry_invalidate()
    registry._last_miss_reload = 0.0
    assert registry.canonical_name("fresh-name") is None  # cached now, for an hour
    registry._last_miss_reload = 0.0  # as if 0.5 s had passed
    ModelVersion.objects.create(
        served_name="fresh-name", label="v1", path=str(demo_model_dir), status="stable"
    )
    assert registry.canonical_name("fresh-name") == "fresh-name"
    ModelVersion.objects.create(served_name="another", label="v1", path=str(demo_model_dir), status="stable")
    assert registry.canonical_name("another") is None  # within 0.5 s of the last look: no query
    registry.registry_invalidate()


@pytest.mark.django_db(transaction=True)
def test_a_change_made_by_another_process_is_seen_at_once(settings: Any, demo_model_dir: Path) -> None:
    """Another process changed the table and bumped the generation: this process's cache
    (an hour here) is reloaded within GENERATION_CHECK_S; a save here bumps it too."""
    from config.processes import wait_until
    from inference.core.redis import get_redis
    from inference.models import ModelVersion
    from inference.versions import registry

    settings.SLUICE_REGISTRY_CACHE_S = 3600
    version = ModelVersion.objects.create(
        served_name="gen", label="v1", path=str(demo_model_dir), status="stable"
    )
    assert [v.status for v in registry.all_versions() if v.name == "gen"] == ["stable"]
    ModelVersion.objects.filter(pk=version.pk).update(status="retired")  # no signal: "elsewhere"
    assert [v.status for v in registry.all_versions() if v.name == "gen"] == ["stable"]  # cached
    get_redis().incr(registry.GENERATION_KEY)
    wait_until(
        lambda: [v.status for v in registry.all_versions() if v.name == "gen"] == ["retired"],
        timeout=5,
        what="the reload",
    )
    before = registry._read_generation()
    version.label = "v2"
    version.save()  # the signal bumps the generation once committed
    assert registry._read_generation() not in (before, None)
    registry.registry_invalidate()
