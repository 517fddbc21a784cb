"""Version health and lifecycle on real Postgres and Valkey: breakers, canary rollback,
operator actions, the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import override_settings

from inference.core.redis import get_redis
from inference.models import EventKind, ModelVersion, ModelVersionEvent, VersionStatus
from inference.versions.health import (
    breaker_key,
    open_breakers,
    stats_key,
    version_record_outcome,
    version_stats,
    versions_health_check,
)
from inference.versions.lifecycle import version_drain, version_promote, version_rollback
from inference.versions.registry import (
    all_versions,
    registry_invalidate,
    served_models,
    served_versions,
    version_by_id,
)
from tests.conftest import TEST_MODEL_NAME

pytestmark = pytest.mark.django_db

FAST = {
    "SLUICE_VERSION_MIN_SAMPLES": 5,
    "SLUICE_BREAKER_MIN_SAMPLES": 5,
    "SLUICE_BREAKER_ERROR_RATE": 0.5,
    "SLUICE_BREAKER_COOLDOWN_S": 30,
    "SLUICE_CANARY_ERROR_MARGIN": 0.05,
    "SLUICE_CANARY_TTFT_MARGIN": 0.5,
    "SLUICE_REGISTRY_CACHE_S": 0,
}


@pytest.fixture(autouse=True)
def _clean() -> None:
    registry_invalidate()
    client = get_redis()
    for pattern in ("sluice:vstats:*", "sluice:breaker:*", "sluice:breaker-opened:*"):
        for key in client.scan_iter(match=pattern):
            client.delete(key)


def make(
    label: str, *, status: str = "stable", weight: int = 100, name: str = "svc", **extra: object
) -> ModelVersion:
    version = ModelVersion.objects.create(
        served_name=name, label=label, path="/models/x", status=status, traffic_weight=weight, **extra
    )
    registry_invalidate()
    return version


def served(version: ModelVersion) -> object:
    found = version_by_id(version.pk)
    assert found is not None
    return found


def test_registry_serves_the_settings_model_until_versions_exist(demo_model_dir: Path) -> None:
    assert [v.key for v in served_models()] == [f"{TEST_MODEL_NAME}@default"]
    draft = make("v9", status="draft", name=TEST_MODEL_NAME)
    assert [v.key for v in served_models()] == [f"{TEST_MODEL_NAME}@default"]  # drafts are not served
    draft.status = VersionStatus.STABLE
    draft.save()
    registry_invalidate()
    assert [v.key for v in served_models()] == [f"{TEST_MODEL_NAME}@v9"]
    assert served(draft).queue == f"sluice.version.{draft.pk}"  # type: ignore[attr-defined]


@override_settings(**FAST)
def test_breaker_opens_on_errors_and_records_why() -> None:
    v1 = make("v1", status="stable")
    model = served(v1)
    for _ in range(2):
        version_record_outcome(version=model, ok=True, ttft_s=0.01)  # type: ignore[arg-type]
    for _ in range(2):
        version_record_outcome(version=model, ok=False)  # type: ignore[arg-type]
    assert open_breakers(["svc@v1"]) == set()  # 4 samples: below the minimum of 5
    version_record_outcome(version=model, ok=False)  # type: ignore[arg-type]
    assert open_breakers(["svc@v1"]) == {"svc@v1"}  # 3 errors in 5: 60% >= 50%
    assert 0 < get_redis().ttl(breaker_key("svc@v1")) <= 30
    event = ModelVersionEvent.objects.get(version=v1, kind=EventKind.BREAKER_OPEN)
    assert "error rate" in event.reason and event.data["samples"] >= 5
    assert version_stats("svc@v1").samples == 5  # the window keeps them (the canary check needs them)


@override_settings(**FAST)
def test_failing_canary_is_rolled_back_and_a_healthy_one_is_not() -> None:
    make("v1", status="stable")
    bad = make("v2", status="canary", weight=30)
    good = make("v3", status="canary", weight=20)
    stable = served(ModelVersion.objects.get(label="v1"))
    for _ in range(10):
        version_record_outcome(version=stable, ok=True, ttft_s=0.02)  # type: ignore[arg-type]
        version_record_outcome(version=served(good), ok=True, ttft_s=0.02)  # type: ignore[arg-type]
    for i in range(5):
        version_record_outcome(version=served(bad), ok=i == 0, ttft_s=0.02)  # type: ignore[arg-type]
    bad.refresh_from_db()
    good.refresh_from_db()
    assert bad.traffic_weight == 0 and bad.status == VersionStatus.CANARY
    assert good.traffic_weight == 20
    event = ModelVersionEvent.objects.get(version=bad, kind=EventKind.ROLLED_BACK)
    assert "automatic rollback: error rate 80.0% vs stable 0.0%" in event.reason and event.actor == "auto"
    assert not ModelVersionEvent.objects.filter(version=good).exists()


@override_settings(**FAST)
def test_slow_canary_is_rolled_back_on_ttft() -> None:
    make("v1", status="stable")
    slow = make("v2", status="canary", weight=10)
    for _ in range(6):
        version_record_outcome(version=served(ModelVersion.objects.get(label="v1")), ok=True, ttft_s=0.05)  # type: ignore[arg-type]
    get_redis().delete(stats_key("svc@v2"))
    client = get_redis()
    for i in range(6):  # outcomes written directly: the check runs from the periodic pass
        client.zadd(stats_key("svc@v2"), {f"{10**12 + i}:x{i}:1:400": 10**13})
    assert versions_health_check() == 1
    slow.refresh_from_db()
    assert slow.traffic_weight == 0
    assert "TTFT p99 400 ms vs stable 50 ms" in ModelVersionEvent.objects.get(version=slow).reason


def test_operator_actions() -> None:
    v1 = make("v1", status="stable")
    v2 = make("v2", status="canary", weight=10)
    version_promote(version=v2, actor="ops")
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status, v2.traffic_weight) == ("retired", "stable", 10)
    assert [v.label for v in served_versions("svc")] == ["v2"]
    assert {e.kind for e in ModelVersionEvent.objects.all()} == {"retired", "promoted"}
    # Rolling back a stable version restores the one before it.
    version_rollback(version=v2, actor="ops")
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("stable", "retired")
    version_drain(version=v1, actor="ops")
    v1.refresh_from_db()
    assert v1.traffic_weight == 0 and v1.status == "stable"
    assert all_versions()  # the registry reads them back
