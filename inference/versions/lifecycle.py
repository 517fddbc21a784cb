"""Model-version lifecycle in the `ModelVersion` table: the operator's actions (activate,
promote, roll back, drain, retire), each recorded as an event the admin shows.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from inference.models import EventKind, ModelVersion, ModelVersionEvent, VersionStatus
from inference.versions.registry import registry_changed

logger = logging.getLogger(__name__)


def version_event(
    version_id: int | None, kind: str, reason: str, data: dict[str, Any] | None = None, *, actor: str = ""
) -> None:
    if version_id is None:
        logger.info("settings version: %s %s", kind, reason)
        return
    ModelVersionEvent.objects.create(
        version_id=version_id, kind=kind, reason=reason, data=data or {}, actor=actor
    )
    logger.warning("model version %s: %s: %s", version_id, kind, reason)


# -- operator actions ------------------------------------------------------------------------


def _save(version: ModelVersion, kind: str, reason: str, actor: str, **fields: Any) -> ModelVersion:
    with transaction.atomic():
        for name, value in fields.items():
            setattr(version, name, value)
        version.save()
        version_event(version.pk, kind, reason, {k: str(v) for k, v in fields.items()}, actor=actor)
    registry_changed()
    return version


def version_activate(
    *, version: ModelVersion, status: str, weight: int | None = None, actor: str = ""
) -> ModelVersion:
    """Start serving a version as stable or canary (workers load it within seconds)."""
    if status not in (VersionStatus.STABLE, VersionStatus.CANARY):
        raise ValueError("activate as stable or canary")
    weight = version.traffic_weight if weight is None else weight
    return _save(
        version,
        EventKind.ACTIVATED,
        f"activated as {status}, weight {weight}",
        actor,
        status=status,
        traffic_weight=weight,
    )


def version_promote(*, version: ModelVersion, actor: str = "") -> ModelVersion:
    """The canary becomes the stable version; the previous stable versions retire (their
    running jobs finish on them). A hot switch."""
    with transaction.atomic():
        previous = list(
            ModelVersion.objects.filter(served_name=version.served_name, status=VersionStatus.STABLE).exclude(
                pk=version.pk
            )
        )
        for old in previous:
            _save(old, EventKind.RETIRED, f"replaced by {version.label}", actor, status=VersionStatus.RETIRED)
        weight = version.traffic_weight or 100
        return _save(
            version,
            EventKind.PROMOTED,
            "promoted to stable",
            actor,
            status=VersionStatus.STABLE,
            traffic_weight=weight,
        )


def version_rollback(*, version: ModelVersion, actor: str = "", reason: str = "") -> ModelVersion:
    """Take a version out of traffic. A canary goes back to draft; a stable version retires,
    and the newest retired stable version of the same name (if any) serves again."""
    why = reason or "rolled back by an operator"
    with transaction.atomic():
        if version.status == VersionStatus.STABLE:
            previous = (
                ModelVersion.objects.filter(served_name=version.served_name, status=VersionStatus.RETIRED)
                .exclude(pk=version.pk)
                .order_by("-updated_at")
                .first()
            )
            if previous is not None:
                _save(
                    previous,
                    EventKind.ACTIVATED,
                    f"restored by the rollback of {version.label}",
                    actor,
                    status=VersionStatus.STABLE,
                )
            return _save(version, EventKind.ROLLED_BACK, why, actor, status=VersionStatus.RETIRED)
        return _save(version, EventKind.ROLLED_BACK, why, actor, status=VersionStatus.DRAFT, traffic_weight=0)


def version_drain(*, version: ModelVersion, actor: str = "") -> ModelVersion:
    """No new traffic (weight 0); workers keep it loaded and finish its jobs."""
    return _save(version, EventKind.DRAINED, "drained: no new traffic", actor, traffic_weight=0)


def version_retire(*, version: ModelVersion, actor: str = "") -> ModelVersion:
    return _save(version, EventKind.RETIRED, "retired", actor, status=VersionStatus.RETIRED)
