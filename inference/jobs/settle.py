"""What every ending of a job does once, whichever step ends it: the admission grant goes back
(the tokens used are charged, the rest of the reservation refunded) and the usage tracker
hears that the job ended."""

from __future__ import annotations

import uuid

from django.utils import timezone

from inference.admission.services import admission_release
from inference.models import Job
from inference.observability.usage import job_ended


def job_settle(*, job: Job | None, job_id: uuid.UUID | str, used_tokens: int, ran: bool) -> None:
    """``job``: its row with ``admission`` and ``queued_at`` (None: it has no admission to give
    back). ``ran``: it ran on an engine (the grant's duration counts from its queueing)."""
    if job is not None and job.admission:
        duration = (timezone.now() - job.queued_at).total_seconds() if ran and job.queued_at else 0.0
        admission_release(grant=job.admission, used_tokens=used_tokens, duration_s=duration)
    job_ended(job_id=job_id)
