"""Job reads (the gateway reaches them through the job client, ``inference.client``)."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet

from inference.models import Job
from inference.versions.registry import version_by_id


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


def _ms_between(start: Any, end: Any) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start).total_seconds() * 1000))


def job_timings(job: Job) -> dict[str, Any]:
    """A job's timeline in milliseconds: received -> admitted (wait, and what for) -> queued
    -> started (worker, version, attempt) -> first token -> finished. A step that has not
    happened (or a job from before timelines were kept) is ``null``."""
    received = job.received_at or job.queued_at
    version = version_by_id(job.model_version_id, job.model)

    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "received_at": iso(job.received_at),
        "admitted_at": iso(job.admitted_at),
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "first_token_at": iso(job.first_token_at),
        "finished_at": iso(job.finished_at),
        "admission_wait_ms": job.admission_wait_ms,
        "admission_waited_for": job.admission_waited_for or None,
        "queue_ms": _ms_between(job.queued_at, job.started_at),
        "prefill_ms": _ms_between(job.started_at, job.first_token_at),
        "time_to_first_token_ms": _ms_between(received, job.first_token_at),
        "generation_ms": _ms_between(job.first_token_at, job.finished_at),
        "total_ms": _ms_between(received, job.finished_at),
        "worker": job.worker or None,
        "served_by": job.served_by or None,
        # Session affinity: the worker whose own queue took it (None: the shared queue), and why.
        "routed_worker": job.routed_worker or None,
        "affinity": job.affinity or None,
        "version": version.label if version is not None else None,
        "attempt": job.attempts,
        "tokens_streamed": job.completion_tokens or 0,
        "finish_reason": job.finish_reason or None,
        "error": job.error or None,
    }


def job_list_for_user(*, user: User) -> QuerySet[Job]:
    return Job.objects.filter(user=user).order_by("-queued_at")
