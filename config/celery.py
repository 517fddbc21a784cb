"""The Celery application. Workers run `celery -A config worker` (see inference/worker.py)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Worker lifecycle hooks (model loading, engine shutdown). Connected here, at import, so that
# they are in place before Celery sends worker_init.
import inference.worker  # noqa: E402, F401
