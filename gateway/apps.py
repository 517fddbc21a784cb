from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: this module loads while the app registry is still being populated.
        from gateway import schema  # noqa: F401  (registers the OpenAPI auth extension)
        from inference.observability.export import register_fleet_collector  # imports models

        register_fleet_collector()
