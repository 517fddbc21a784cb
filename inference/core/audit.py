"""Audit services: one entry per change of an audited object, by whoever made it (an admin
page, the API, a lifecycle service), and sampled counts of authentication failures.

Secrets never enter the log: a key's hash, a version's upstream API key and similar fields
are listed in ``SECRET_FIELDS`` and recorded as ``"(changed)"``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import models
from django.http import HttpRequest
from django.utils import timezone

from inference.core.keys import auth_failure_sampled_key, auth_failures_key
from inference.core.models import AuditAction, AuditEntry, AuthFailure
from inference.core.redis import get_redis

logger = logging.getLogger(__name__)

SECRET_FIELDS = frozenset({"key_hash", "api_key", "password"})
#: Written at most once per this many seconds per (prefix, address, via); counted in Redis always.
AUTH_FAILURE_SAMPLE_S = 60


def _plain(value: Any) -> Any:
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple | set):
        return sorted(_plain(v) for v in value) if isinstance(value, set) else [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def object_state(obj: models.Model) -> dict[str, Any]:
    """The audited fields of a row (its concrete fields and many-to-many relations)."""
    state: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        value = getattr(obj, field.attname)
        state[field.name] = "(secret)" if field.name in SECRET_FIELDS and value else _plain(value)
    if obj.pk is not None:
        for m2m in obj._meta.many_to_many:
            state[m2m.name] = sorted(str(related) for related in getattr(obj, m2m.name).all())
    return state


def state_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """``{field: [before, after]}`` for the fields that differ (timestamps of the row itself
    are left out: they change on every save)."""
    changes = {}
    for name in sorted(set(before) | set(after)):
        if name in ("updated_at", "last_used_at"):
            continue
        old, new = before.get(name), after.get(name)
        if old != new:
            if name in SECRET_FIELDS:
                old, new = "(secret)", "(changed)"
            changes[name] = [old, new]
    return changes


def request_ip(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    try:
        return str(ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")))
    except ValueError:
        return None


def audit_record(
    *,
    action: str,
    obj: models.Model,
    actor: User | AnonymousUser | None = None,
    actor_name: str = "",
    changes: dict[str, Any] | None = None,
    via: str = "admin",
    request: HttpRequest | None = None,
    version_event: Any = None,
) -> AuditEntry:
    user = actor if isinstance(actor, User) else None
    return AuditEntry.objects.create(
        actor=user,
        actor_name=(actor_name or (user.get_username() if user is not None else "") or "system")[:200],
        action=action,
        object_type=f"{obj._meta.app_label}.{obj._meta.model_name}",
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        changes=_plain(changes or {}),
        via=via,
        source_ip=request_ip(request),
        version_event=version_event,
    )


def audit_created(obj: models.Model, **kwargs: Any) -> AuditEntry:
    return audit_record(action=AuditAction.CREATED, obj=obj, changes=object_state(obj), **kwargs)


def audit_changed(obj: models.Model, before: dict[str, Any], **kwargs: Any) -> AuditEntry | None:
    """An entry only if something changed (a save with no change is not an event)."""
    changes = state_diff(before, object_state(obj))
    if not changes:
        return None
    return audit_record(action=AuditAction.CHANGED, obj=obj, changes=changes, **kwargs)


def audit_deleted(obj: models.Model, state: dict[str, Any] | None = None, **kwargs: Any) -> AuditEntry:
    return audit_record(action=AuditAction.DELETED, obj=obj, changes=state or object_state(obj), **kwargs)


def audit_version_event(event: Any) -> AuditEntry:
    """A model-version lifecycle event, linked in (its actor is a user name, "auto" or a worker)."""
    actor = User.objects.filter(username=event.actor).first() if event.actor else None
    return audit_record(
        action=AuditAction.EVENT,
        obj=event.version,
        actor=actor,
        actor_name=event.actor or "auto",
        changes={"event": event.kind, "reason": event.reason, **({"data": event.data} if event.data else {})},
        via="system" if actor is None else "admin",
        version_event=event,
    )


def auth_failure_record(*, key_prefix: str, request: HttpRequest | None = None, source_ip: str | None = None,
                        via: str = "api") -> None:  # fmt: skip
    """Count a failed authentication. Never raises: a broken counter must not turn a 401
    into a 500."""
    ip = source_ip if source_ip is not None else request_ip(request)
    prefix = key_prefix[:16]
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    field = f"{via}|{prefix}|{ip or ''}"
    key = auth_failures_key(hour)
    try:
        client = get_redis()
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key, field, 1)
        pipe.expire(key, 3 * 3600)
        pipe.set(auth_failure_sampled_key(hour, field), "1", nx=True, ex=AUTH_FAILURE_SAMPLE_S)
        count, _, first_in_sample = pipe.execute()
        if not first_in_sample:
            return
        AuthFailure.objects.update_or_create(
            hour=hour,
            key_prefix=prefix,
            source_ip=ip,
            via=via,
            defaults={"count": int(count), "last_at": now},
        )
    except Exception:
        logger.warning("could not count an authentication failure", exc_info=True)


def auth_failures_sync() -> int:
    """Write the Redis counts of this hour and the last into ``AuthFailure`` (exact when the
    admin page is opened; sampled writes keep it close in between). Returns rows written."""
    now = timezone.now()
    written = 0
    for hours_ago in (1, 0):
        hour = (now - dt.timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)
        try:
            raw: Any = get_redis().hgetall(auth_failures_key(hour))
        except Exception:
            logger.warning("could not read authentication failure counts", exc_info=True)
            return written
        for field, count in (raw or {}).items():
            text = field.decode() if isinstance(field, bytes) else str(field)
            via, prefix, ip = [*text.split("|", 2), "", ""][:3]
            row, created = AuthFailure.objects.get_or_create(
                hour=hour, key_prefix=prefix, source_ip=ip or None, via=via,
                defaults={"count": int(count), "last_at": now},
            )  # fmt: skip
            if not created and row.count < int(count):
                AuthFailure.objects.filter(pk=row.pk).update(count=int(count))
            written += 1
    return written
