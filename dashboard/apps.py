from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from inference.models import ModelVersionEvent

        post_save.connect(_version_event_saved, sender=ModelVersionEvent, dispatch_uid="audit-version-event")


def _version_event_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """Lifecycle events (activated, promoted, rolled back, breaker opened, ...) are recorded by
    inference.versions wherever they happen (admin, reconciler, worker); the audit log links
    each one in."""
    if not created:
        return
    import logging

    from dashboard.audit import audit_version_event

    try:
        audit_version_event(instance)
    except Exception:  # the audit must never undo a lifecycle step
        logging.getLogger(__name__).warning("could not audit version event %s", instance.pk, exc_info=True)
