"""A client's cancel and soft delete."""

from __future__ import annotations

from django.utils import timezone

from inference.jobs.settle import job_settle
from inference.jobstream import StreamEntry
from inference.models import Job, JobFinish, JobStatus
from inference.store import get_streams


def job_cancel(*, job: Job) -> Job:
    """Cancel a job: at once if it has not started, else at the engine's next step."""
    now = timezone.now()
    Job.objects.filter(id=job.id, cancel_requested_at__isnull=True).update(cancel_requested_at=now)
    updated = Job.objects.filter(id=job.id, status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELLED, finish_reason=JobFinish.CANCELLED, finished_at=now
    )
    streams = get_streams()
    if updated:
        streams.finish(
            str(job.id),
            StreamEntry.end(status=JobStatus.CANCELLED, finish_reason=JobFinish.CANCELLED, usage=None),
        )
        job_settle(job=job, job_id=job.id, used_tokens=0, ran=False)
    else:
        streams.request_cancel(str(job.id))
    job.refresh_from_db()
    return job


def job_soft_delete(*, job: Job) -> None:
    """Hide a job from its owner (Responses DELETE); the row stays for usage and audit."""
    Job.objects.filter(id=job.id, deleted_at__isnull=True).update(deleted_at=timezone.now())
