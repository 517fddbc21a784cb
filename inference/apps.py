from typing import Any

from django.apps import AppConfig


def _version_table_changed(**kwargs: Any) -> None:
    """Any save or delete of a ModelVersion (admin, services, a shell): every process's
    registry reloads once the change is committed (inference/versions/registry.py)."""
    from django.db import transaction

    from inference.versions.registry import registry_changed

    transaction.on_commit(registry_changed)


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from inference.models import ModelVersion

        post_save.connect(_version_table_changed, sender=ModelVersion, dispatch_uid="registry-save")
        post_delete.connect(_version_table_changed, sender=ModelVersion, dispatch_uid="registry-delete")
