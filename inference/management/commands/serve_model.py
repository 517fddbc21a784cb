"""``python manage.py serve_model``: a Celery worker for the served model, sized from settings.

The worker runs one thread per job it holds (the engine batches their sequences), so the
pool is sized from the engine: ``max_batch_size`` slots plus a waiting room, so that the next
jobs are already in the engine's queue when a slot frees up instead of still in Redis
(concurrency x prefetch >= max_batch_size, DESIGN.md §4). The process is replaced by Celery
(``exec``), so signals reach Celery directly (SIGTERM: warm shutdown).
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from config.processes import default_concurrency, worker_argv


class Command(BaseCommand):
    help = "Run a Celery worker serving the configured model (threads pool sized from the batch size)."

    def add_arguments(self, parser: CommandParser) -> None:
        served = [name for name in settings.SLUICE_WORKER_MODELS if name != "*"]
        # The first served name's queue is the worker's -Q; the others are added at start.
        parser.add_argument("--model", default=served[0] if served else settings.SLUICE_MODEL_NAME)
        parser.add_argument("--concurrency", type=int, default=0, help="default: max batch size + 25%%")
        parser.add_argument("--hostname", default=None)
        parser.add_argument("--loglevel", default="WARNING")

    def handle(self, *args: Any, **options: Any) -> None:
        concurrency = options["concurrency"] or default_concurrency(settings.SLUICE_MAX_BATCH_SIZE)
        argv = worker_argv(
            model=options["model"],
            concurrency=concurrency,
            hostname=options["hostname"],
            loglevel=options["loglevel"],
        )
        os.execv(argv[0], argv)  # noqa: S606 - a fixed argv, no shell
