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
        from inference.backends.demo_model import DemoModelSpec, build_demo_model

        spec = DemoModelSpec(budget_seconds=options["budget_seconds"])
        if options["tiny"]:
            spec = DemoModelSpec(
                vocab_size=1024,
                hidden_size=128,
                intermediate_size=352,
                layers=2,
                heads=4,
                context_length=512,
                seq_len=64,
                batch_size=16,
                budget_seconds=options["budget_seconds"],
            )
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
