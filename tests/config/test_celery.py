"""The Celery app's setup (config/celery.py)."""

from __future__ import annotations

import threading

from celery.backends.base import DisabledBackend

from config.celery import app
from inference.tasks import run_job


def test_every_thread_publishes_with_one_shared_disabled_backend() -> None:
    """Results are off, so every task shares one backend instance: a new thread (each web
    request's sync view runs in one) does not rebuild the thread-local one, which resolves the
    backend's name through the installed packages' entry points every time."""
    app.finalize()
    main_thread = run_job.backend
    assert isinstance(main_thread, DisabledBackend)
    seen: list[object] = []

    def look() -> None:
        seen.append(run_job.backend)
        seen.append(run_job.AsyncResult("00000000-0000-0000-0000-000000000000").backend)

    threads = [threading.Thread(target=look) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 6 and all(backend is main_thread for backend in seen)
    assert all(task.backend is main_thread for task in app.tasks.values())
