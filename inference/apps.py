"""The inference app. Its models and tasks load only once Django's app registry is ready, so
everything this module wires up is imported inside ``ready``."""

import logging
from typing import Any

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete, post_save


def _version_table_changed(**kwargs: Any) -> None:
    """Any save or delete of a ModelVersion (admin, services, a shell): every process's
    registry reloads once the change is committed (inference/versions/registry.py)."""
    # Imported here: this module is loaded while the app registry is still being populated.
    from inference.versions.registry import registry_changed

    transaction.on_commit(registry_changed)


def _version_event_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """Lifecycle events (activated, promoted, rolled back, breaker opened, ...) are recorded by
    inference.versions wherever they happen (admin, reconciler, worker); the audit log links
    each one in."""
    if not created:
        return
    # Imported here: this module is loaded while the app registry is still being populated.
    from inference.core.audit import audit_version_event

    try:
        audit_version_event(instance)
    except Exception:  # the audit must never undo a lifecycle step
        logging.getLogger(__name__).warning("could not audit version event %s", instance.pk, exc_info=True)


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the Celery tasks in every process, the web's included: the job steps
        # publish them by name (inference.jobs.publish), so nothing else imports them.
        import inference.tasks  # noqa: F401

        # Models can be imported only now that the registry is ready.
        from inference.models import ModelVersion, ModelVersionEvent

        post_save.connect(_version_table_changed, sender=ModelVersion, dispatch_uid="registry-save")
        post_delete.connect(_version_table_changed, sender=ModelVersion, dispatch_uid="registry-delete")
        post_save.connect(_version_event_saved, sender=ModelVersionEvent, dispatch_uid="audit-version-event")
