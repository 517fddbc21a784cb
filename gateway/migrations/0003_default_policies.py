"""Two policies every deployment starts with: ``default`` (applies to everyone without a
policy of their own; operators tune it in the admin) and ``unlimited`` (for benchmarks and
trusted internal keys)."""

from django.db import migrations


def create(apps, schema_editor):
    Policy = apps.get_model("gateway", "RateLimitPolicy")
    if not Policy.objects.filter(is_default=True).exists():
        Policy.objects.get_or_create(
            name="default",
            defaults={
                "description": "Everyone without a policy of their own.",
                "requests_per_minute": 600,
                "tokens_per_minute": 1_000_000,
                "max_concurrent": 64,
                "daily_token_budget": 0,
                "max_queue_wait_s": 30.0,
                "priority": 0,
                "burst": 1.0,
                "is_default": True,
            },
        )
    Policy.objects.get_or_create(
        name="unlimited",
        defaults={
            "description": "No limits (benchmarks, trusted internal callers).",
            "requests_per_minute": 0,
            "tokens_per_minute": 0,
            "max_concurrent": 0,
            "daily_token_budget": 0,
            "max_queue_wait_s": 60.0,
            "priority": 0,
            "burst": 1.0,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("gateway", "0002_rate_limit_policies")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
