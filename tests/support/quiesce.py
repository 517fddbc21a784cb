"""Let the live servers finish with a test's work before its data is flushed.

pytest-django flushes the database (TRUNCATE) after every transactional test. A live worker
still writing rows of that test (finishing a job, recording a turn, ingesting a document)
deadlocks with the TRUNCATE (seen on a busy 2-core machine). So a test first cancels what it
left running and waits, on conditions not on time, until nothing is running any more.
"""

from __future__ import annotations

import json
import time

from inference.core.redis import get_redis
from inference.jobs.cancel import job_cancel
from inference.jobs.finish import job_fail
from inference.models import Document, DocumentStatus, Job
from inference.models.jobs import TERMINAL_STATUSES


def _engines_idle() -> bool:
    client = get_redis()
    for key in client.scan_iter(match="sluice:worker:*"):
        raw = client.get(key)
        if raw:
            beat = json.loads(raw)
            if time.time() - float(beat.get("ts", 0)) > 3:
                continue  # a killed worker's last beat, until it expires: nothing runs there
            if int(beat.get("running", 0)) or int(beat.get("waiting", 0)):
                return False
    return True


def _open_jobs() -> list[Job]:
    return list(Job.objects.exclude(status__in=TERMINAL_STATUSES))


def _busy_documents() -> bool:
    return Document.objects.filter(status__in=[DocumentStatus.QUEUED, DocumentStatus.PROCESSING]).exists()


def quiesce(timeout: float = 60.0) -> None:
    for job in _open_jobs():
        job_cancel(job=job)
    deadline = time.monotonic() + timeout
    # A job whose worker was killed has nobody to see its cancel flag: after a grace period it
    # is failed here (its leases are released with it).
    force_at = time.monotonic() + min(20.0, timeout / 2)
    while time.monotonic() < deadline:
        jobs = _open_jobs()
        if not jobs and _engines_idle() and not _busy_documents():
            # One more heartbeat interval: the engine's last writes land after its counters drop.
            time.sleep(0.2)
            return
        if jobs and time.monotonic() > force_at:
            for job in jobs:
                job_fail(job_id=job.id, error="left running by a finished test")
        time.sleep(0.05)
    raise TimeoutError("the live servers did not finish the test's work in time")
