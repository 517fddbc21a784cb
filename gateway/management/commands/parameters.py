"""Print the README's tables of request parameters (honoured or refused, per protocol)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from gateway.parameter_tables import markdown


class Command(BaseCommand):
    help = "Print the README's request-parameter tables (gateway/parameter_tables.py)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(markdown())
