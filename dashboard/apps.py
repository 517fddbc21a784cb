from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """The console on top: it imports the gateway and inference and nothing imports it. Its
    models (the audit log) are defined one floor down, in inference/core/models.py."""

    name = "dashboard"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"
