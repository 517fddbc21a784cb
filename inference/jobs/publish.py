"""Hand a job to its Celery queue. The lowest step of a job's life: every other step that
(re)queues a job calls ``job_publish``; it imports no other step."""

from __future__ import annotations

import uuid

from celery import current_app
from django.conf import settings
from django.utils import timezone

from inference.admission.ratelimit import MAX_TIER
from inference.models import Job
from inference.versions.registry import queue_for, version_by_id, version_queue

#: The task that runs a job (``inference.tasks.run_job``). Looked up by name: the tasks import
#: the job steps, so importing the task here would make a cycle.
RUN_JOB_TASK = "inference.run_job"


def celery_priority(tier: int) -> int:
    """Rate-limit tier (higher first) -> kombu Redis priority (0 is consumed first)."""
    return MAX_TIER - max(0, min(MAX_TIER, tier))


def job_publish(*, job_id: uuid.UUID | str, queue: str, priority: int = 0, countdown: float = 0.0) -> None:
    # The registered task object, not ``send_task``: it carries the shared result backend that
    # config/celery.py gives every task (``send_task`` would build one per web thread).
    current_app.tasks[RUN_JOB_TASK].apply_async(
        args=[str(job_id)], queue=queue, priority=celery_priority(priority), countdown=countdown or None
    )
    Job.objects.filter(id=job_id, published_at__isnull=True).update(
        published_at=timezone.now(), next_attempt_at=None
    )


def job_queue(model_name: str, version_id: int | None) -> str:
    """The shared queue of a job's version (of its served name for a settings version)."""
    return queue_for(model_name) if version_id is None else version_queue(version_id)


def attempts_allowed(model_name: str, version_id: int | None) -> int:
    version = version_by_id(version_id, model_name)
    return version.attempts_allowed if version is not None else settings.SLUICE_MAX_ATTEMPTS
