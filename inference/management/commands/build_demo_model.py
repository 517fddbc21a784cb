"""``python manage.py build_demo_model``: train the offline demo model.

See inference/backends/demo_model.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Train Sluice's tiny demo model and tokenizer from the bundled corpus (offline)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", default=settings.SLUICE_MODEL_PATH, help="model directory to write")
        parser.add_argument("--budget-seconds", type=float, default=150.0, help="training time budget")
        parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
        parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
        parser.add_argument("--tiny", action="store_true", help="a much smaller model (tests, smoke checks)")

    def handle(self, *args: Any, **options: Any) -> None:
        # torch (through demo_model) only when a model is built: not for `--help`
        from inference.backends.demo_model import DemoModelSpec, build_demo_model

        budget = options["budget_seconds"]
        spec = DemoModelSpec.tiny(budget) if options["tiny"] else DemoModelSpec(budget_seconds=budget)
        report = build_demo_model(
            Path(options["out"]),
            spec,
            threads=options["threads"],
            force=options["force"],
            log=self.stderr.write,
        )
        if report.reused:
            self.stdout.write(f"demo model up to date at {report.path}")
        else:
            self.stdout.write(
                f"built {report.path}: {report.parameters / 1e6:.1f}M parameters, {report.steps} steps "
                f"in {report.seconds}s, loss {report.first_loss} -> {report.final_loss}\n"
                f"sample: {report.sample!r}"
            )
