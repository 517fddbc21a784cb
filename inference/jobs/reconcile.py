"""The reconciler: a periodic pass (one worker at a time across the fleet) that makes sure
every accepted job runs or ends, whatever died on the way."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from inference.affinity import affinity_reconcile
from inference.jobs.finish import job_fail
from inference.jobs.publish import attempts_allowed, job_publish, job_queue
from inference.jobs.retry import attempt_entry, job_dead_letter, retry_delay_s
from inference.models import DeadLetterReason, Job, JobFinish, JobStatus
from inference.store import get_streams

logger = logging.getLogger(__name__)


def jobs_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Find jobs nobody will run and make sure somebody does (or fail them).

    - queued but never published (the broker was down at commit): publish;
    - queued in the own queue of a worker that is gone (session affinity): to the shared queue;
    - running with no live lease (its worker died or shut down): re-send, so another
      worker resumes it from its stream; the original message is acked as a no-op when the
      broker redelivers it after the visibility timeout;
    - past the deadline while queued or orphaned: fail with ``deadline``.
    """
    now = now or timezone.now()
    streams = get_streams()
    counts = {"published": 0, "rerouted": 0, "requeued": 0, "failed": 0}
    grace = timedelta(seconds=10)
    # Any worker reconciles for the whole fleet: queues follow from the job's model name, not
    # from what this worker serves.
    # Never published (the broker was down at commit), or due for its next attempt.
    unpublished = Job.objects.filter(status=JobStatus.QUEUED, published_at__isnull=True).filter(
        Q(next_attempt_at__isnull=True, queued_at__lt=now - grace) | Q(next_attempt_at__lte=now)
    )
    for job_id, model_name, version_id, priority in unpublished.values_list(
        "id", "model", "model_version_id", "priority"
    )[:200]:
        try:
            job_publish(job_id=job_id, queue=job_queue(model_name, version_id), priority=priority)
        except Exception:
            logger.warning("could not publish job %s; the next pass tries again", job_id, exc_info=True)
            continue
        counts["published"] += 1
    # Published to a worker's own queue (session affinity) that left before taking it.
    counts["rerouted"] = affinity_reconcile(
        Job.objects.filter(status=JobStatus.QUEUED, published_at__isnull=False)
        .exclude(routed_worker="")
        .values_list("id", "model", "model_version_id", "priority", "routed_worker")[:500]
    )
    for job_id, published_at, attempts in Job.objects.filter(
        status__in=[JobStatus.QUEUED, JobStatus.RUNNING], deadline_at__lt=now - grace
    ).values_list("id", "published_at", "attempts")[:200]:
        if not streams.lease_holders([str(job_id)]).get(str(job_id)):
            if published_at is None and attempts == 0:
                counts["failed"] += job_dead_letter(
                    job_id=job_id,
                    reason=DeadLetterReason.PUBLISH_FAILED,
                    error="it could not be queued before its deadline",
                )
            else:
                counts["failed"] += job_fail(
                    job_id=job_id, error="deadline exceeded", reason=JobFinish.DEADLINE
                )
    running = list(
        Job.objects.filter(status=JobStatus.RUNNING).values_list(
            "id", "model", "model_version_id", "attempts", "priority", "worker"
        )[:1000]
    )
    holders = streams.lease_holders([str(job_id) for job_id, *_ in running])
    for job_id, model_name, version_id, attempts, priority, worker in running:
        if holders.get(str(job_id)):
            continue
        allowed = attempts_allowed(model_name, version_id)
        if attempts >= allowed:
            counts["failed"] += job_dead_letter(
                job_id=job_id,
                reason=DeadLetterReason.WORKER_LOST,
                error=f"its worker was lost on each of {attempts} attempts (last: {worker or 'unknown'})",
            )
            continue
        if streams.mark_requeued(str(job_id), ttl_s=settings.SLUICE_JOB_TIMEOUT_S):
            delay = retry_delay_s(attempts)
            logger.warning("job %s lost its worker %s; re-sending it in %.1fs", job_id, worker, delay)
            entry = attempt_entry(
                attempt=attempts, worker=worker, reason=DeadLetterReason.WORKER_LOST, error="worker lost"
            )
            job_row = Job.objects.filter(id=job_id).only("attempt_log").first()
            if job_row is not None:
                Job.objects.filter(id=job_id).update(attempt_log=[*(job_row.attempt_log or []), entry])
            job_publish(
                job_id=job_id, queue=job_queue(model_name, version_id), priority=priority, countdown=delay
            )
            counts["requeued"] += 1
    return counts
