"""A failed attempt: backoff and requeue, or the dead letters once a version's attempts are
used up; an operator's requeue or discard of a dead letter."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from inference.jobs.publish import job_publish, job_queue
from inference.jobs.settle import job_settle
from inference.jobstream import StreamEntry
from inference.models import DeadLetter, Job, JobStatus
from inference.store import get_streams
from inference.streams import cancel_key, stream_key
from inference.textutil import pg_safe

logger = logging.getLogger(__name__)


def retry_delay_s(attempts: int) -> float:
    """Exponential backoff before attempt ``attempts + 1``: base, 2x base, 4x base, ... capped."""
    base, cap = settings.SLUICE_RETRY_BACKOFF_S, settings.SLUICE_RETRY_MAX_BACKOFF_S
    return float(min(cap, base * 2 ** max(0, attempts - 1)))


def attempt_entry(*, attempt: int, worker: str, reason: str, error: str) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "worker": worker,
        "at": timezone.now().isoformat(),
        "reason": str(reason),
        "error": pg_safe(error)[:2000],
    }


def job_retry_later(*, job: Job, token: str, reason: str, error: str, allowed: int) -> bool:
    """A transient failure of this attempt: the job goes back to its queue after a backoff, or,
    when the version's attempts are used up, to the dead letters. True if this attempt still
    owned the job."""
    if job.attempts >= allowed:
        return job_dead_letter(
            job_id=job.id, reason=reason, error=f"{error} (attempt {job.attempts} of {allowed})", token=token
        )
    delay = retry_delay_s(job.attempts)
    log = [
        *(job.attempt_log or []),
        attempt_entry(attempt=job.attempts, worker=job.worker, reason=reason, error=error),
    ]
    updated = Job.objects.filter(id=job.id, attempts=job.attempts, status=JobStatus.RUNNING).update(
        status=JobStatus.QUEUED,
        published_at=None,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        attempt_log=log,
        error=pg_safe(error),
    )
    if updated:
        logger.warning(
            "job %s: attempt %d failed (%s); retrying in %.1fs", job.id, job.attempts, reason, delay
        )
        get_streams().append(
            str(job.id),
            StreamEntry.retry(attempt=job.attempts, error=error, delay_s=delay),
            lease_token=token,
        )
    return bool(updated)


def job_dead_letter(*, job_id: uuid.UUID | str, reason: str, error: str, token: str = "") -> bool:
    """Fail a job for good after its retries, keeping its history for an operator to requeue."""
    job = (
        Job.objects.filter(id=job_id)
        .only("id", "attempts", "attempt_log", "worker", "model", "admission", "queued_at")
        .first()
    )
    if job is None:
        return False
    log = [
        *(job.attempt_log or []),
        attempt_entry(attempt=job.attempts, worker=job.worker, reason=reason, error=error),
    ]
    # One transaction: nobody sees the job failed without its dead letter, and a worker killed
    # between the two writes cannot leave a failed job that no operator can requeue.
    with transaction.atomic():
        updated = Job.objects.filter(id=job_id, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).update(
            status=JobStatus.FAILED,
            finish_reason=str(reason),
            error=pg_safe(error),
            finished_at=timezone.now(),
            next_attempt_at=None,
            attempt_log=log,
        )
        if not updated:
            return False
        DeadLetter.objects.update_or_create(
            job_id=job.id,
            defaults={
                "reason": str(reason),
                "error": pg_safe(error),
                "attempts": job.attempts,
                "history": log,
                "model": job.model,
                "requeued_at": None,
                "discarded_at": None,
            },
        )
    logger.error("job %s dead-lettered (%s): %s", job.id, reason, error)
    get_streams().finish(
        str(job.id),
        StreamEntry.end(status=JobStatus.FAILED, finish_reason=str(reason), usage=None, error=error),
        lease_token=token,
    )
    # It may have run for a while before failing for good: refund nothing.
    reserved = int(job.admission.get("reserved_tokens", 0)) if job.admission else 0
    job_settle(job=job, job_id=job.id, used_tokens=reserved, ran=False)
    return True


def deadletter_requeue(*, letter: DeadLetter, actor: str) -> bool:
    """Run a dead-lettered job again: same id, same stream (its earlier ``end`` is superseded,
    so a client following it sees it continue), fresh attempts and deadline. It is not admitted
    again: an operator's requeue is not a client's request."""
    if letter.discarded_at is not None:
        return False
    now = timezone.now()
    with transaction.atomic():
        updated = Job.objects.filter(id=letter.job_id, status=JobStatus.FAILED).update(
            status=JobStatus.QUEUED,
            attempts=0,
            published_at=None,
            next_attempt_at=None,
            finished_at=None,
            cancel_requested_at=None,
            finish_reason="",
            error="",
            admission={},
            deadline_at=now + timedelta(seconds=settings.SLUICE_JOB_TIMEOUT_S),
        )
        if not updated:
            return False
        DeadLetter.objects.filter(pk=letter.pk).update(
            requeued_at=now, requeue_count=F("requeue_count") + 1, handled_by=actor[:150]
        )
        streams = get_streams()
        job_id = str(letter.job_id)
        streams.append(job_id, StreamEntry.requeue())
        streams.client.expire(stream_key(job_id), streams.open_ttl_s)
        streams.client.delete(cancel_key(job_id))
        streams.clear_requeued(job_id)
        job = Job.objects.only("id", "model", "model_version_id", "priority").get(id=letter.job_id)
        queue = job_queue(job.model, job.model_version_id)
        transaction.on_commit(
            lambda: job_publish(job_id=job.id, queue=queue, priority=job.priority), robust=True
        )
    logger.warning("job %s requeued from the dead letters by %s", letter.job_id, actor)
    return True


def deadletter_discard(*, letter: DeadLetter, actor: str) -> None:
    DeadLetter.objects.filter(pk=letter.pk, discarded_at__isnull=True).update(
        discarded_at=timezone.now(), handled_by=actor[:150]
    )
