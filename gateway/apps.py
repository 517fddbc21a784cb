from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway import schema  # noqa: F401  (registers the OpenAPI auth extension)
        from inference.metrics import register_fleet_collector

        register_fleet_collector()
