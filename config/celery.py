"""The Celery application. Workers run `celery -A config worker` (see inference/worker/signals.py)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.backends.base import DisabledBackend

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _share_the_disabled_backend(sender: Celery, **kwargs: Any) -> None:
    """Give every task one shared result backend where results are off (Sluice's: the job row
    is the result).

    ``app.backend`` is thread-local, and building it resolves the backend's name through the
    installed packages' entry points: about 6 ms of CPU in every new thread. Django's ASGI
    handler runs each request's sync view in a thread of its own, so every ``apply_async``
    from the web paid it (a third of the web process's CPU at a burst of new jobs, under
    py-spy). ``DisabledBackend`` holds no state, so one instance serves every thread.
    """
    backend = sender.backend
    if isinstance(backend, DisabledBackend):
        for task in sender.tasks.values():
            task.backend = backend


# Worker lifecycle hooks (model loading, engine shutdown). Connected here, at import, so that
# they are in place before Celery sends worker_init.
import inference.worker.signals  # noqa: E402, F401
