"""Job reads."""

from __future__ import annotations

import time
import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet

from inference.models import Job
from inference.store import get_redis
from inference.streams import decode_fields, stream_key


def job_get_for_user(*, user: User, job_id: str | uuid.UUID) -> Job | None:
    """A job if it exists *and* belongs to this user (else None: callers answer 404, so
    nobody learns whether another user's job id exists)."""
    try:
        uuid.UUID(str(job_id))
    except ValueError:
        return None
    return Job.objects.filter(id=job_id, user=user).first()


def job_list_for_user(*, user: User) -> QuerySet[Job]:
    return Job.objects.filter(user=user).order_by("-queued_at")


def job_wait_finished(*, job_id: str | uuid.UUID, timeout_s: float) -> Job:
    """Block until the job's stream has its end entry (the row is final by then)."""
    client = get_redis()
    key = stream_key(str(job_id))
    last = "0-0"
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        block_ms = max(1, int(min(remaining, 5.0) * 1000))
        response: Any = client.xread({key: last}, count=1000, block=block_ms)
        if not response:
            job = Job.objects.get(id=job_id)
            if job.is_terminal:  # stream expired or was never written (cancelled early)
                return job
            continue
        for entry_id, raw in response[0][1]:
            last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            if decode_fields(raw).get("t") == "end":
                return Job.objects.get(id=job_id)
    return Job.objects.get(id=job_id)
