"""The audit log's rows: who changed what (policies, model versions, API keys, knowledge-base
sharing), the version lifecycle events linked in, and authentication failures counted per
key prefix and source address.

Defined here, below the gateway and inference that write them; they keep the ``dashboard``
app label they were created under, so their tables, permissions, content types and admin
pages (the console lists them) stay as they are with no migration."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditAction(models.TextChoices):
    CREATED = "created"
    CHANGED = "changed"
    DELETED = "deleted"
    REVOKED = "revoked"
    EVENT = "event"  # a model-version lifecycle event (activate, promote, roll back, ...)


class AuditEntry(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept when the user is deleted; also "auto" or a worker for lifecycle events.
    actor_name = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    # "<app_label>.<model>", e.g. gateway.ratelimitpolicy.
    object_type = models.CharField(max_length=100, db_index=True)
    object_id = models.CharField(max_length=64, db_index=True)
    object_repr = models.CharField(max_length=200)
    # {"field": [before, after]} for a change; the fields for a creation or deletion.
    changes = models.JSONField(default=dict, blank=True)
    # "admin", "api" or "system".
    via = models.CharField(max_length=16, default="admin")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    version_event = models.OneToOneField(
        "inference.ModelVersionEvent", on_delete=models.SET_NULL, null=True, blank=True, related_name="audit"
    )

    class Meta:
        app_label = "dashboard"
        ordering = ["-at", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return (
            f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.object_type} "
            + self.object_repr
        )


class AuthFailure(models.Model):
    """Failed authentications per hour, key prefix and source address. The prefix is the
    visible part of a key (never enough to use it); the count comes from a Redis counter and
    is written here at most once a minute per prefix and address (sampled, not a write per
    failure)."""

    hour = models.DateTimeField(db_index=True)
    key_prefix = models.CharField(max_length=16, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    # api, websocket or admin (the admin login; django-axes also keeps its own log).
    via = models.CharField(max_length=16, default="api")
    count = models.PositiveIntegerField(default=0)
    last_at = models.DateTimeField()

    class Meta:
        app_label = "dashboard"
        ordering = ["-hour", "-count"]
        verbose_name = "authentication failure"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "key_prefix", "source_ip", "via"],
                name="authfailure_unique",
                nulls_distinct=False,
            )
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.key_prefix or '-'} from {self.source_ip}: {self.count}"
