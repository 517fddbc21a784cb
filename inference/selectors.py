"""Job reads."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet

from inference.models import Job
from inference.store import get_redis


def job_get_for_user(*, user: User, job_id: str | uuid.UUID) -> Job | None:
    """A job if it exists *and* belongs to this user (else None: callers answer 404, so
    nobody learns whether another user's job id exists). Deleted responses are gone."""
    try:
        uuid.UUID(str(job_id))
    except ValueError:
        return None
    return Job.objects.filter(id=job_id, user=user, deleted_at__isnull=True).first()


def response_get_for_user(*, user: User, job_id: str | uuid.UUID) -> Job | None:
    """A stored (``store: true``), undeleted response of this user."""
    job = job_get_for_user(user=user, job_id=job_id)
    if job is None or job.source != "responses" or not job.store:
        return None
    return job


def job_list_for_user(*, user: User) -> QuerySet[Job]:
    return Job.objects.filter(user=user).order_by("-queued_at")


def worker_heartbeats() -> list[dict[str, Any]]:
    """The live workers' heartbeats (each expires ~15 s after its worker stops beating)."""
    client = get_redis()
    beats = []
    for key in client.scan_iter(match="sluice:worker:*", count=100):
        raw = client.get(key)
        if raw:
            beats.append(json.loads(raw))
    return beats
