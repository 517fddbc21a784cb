"""Create a job: its row, its stream and its placement in one step, published to its queue
once the row is committed."""

from __future__ import annotations

import functools
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from inference.admission.services import admission_release
from inference.affinity import place as affinity_place
from inference.jobs.publish import job_publish
from inference.models import Job, ModelVersion
from inference.sampling_params import SamplingParams
from inference.store import get_streams
from inference.versions.registry import ServedModel, VersionGone, registry_invalidate
from inference.versions.routing import route

logger = logging.getLogger(__name__)


def job_create(
    *,
    user: User,
    api_key_id: int | None,
    model: ServedModel,
    kind: str,
    input: dict[str, Any],
    params: SamplingParams,
    source: str,
    prompt_tokens: int | None = None,
    priority: int = 0,
    admission: dict[str, Any] | None = None,
    session_id: uuid.UUID | str | None = None,
    request_id: str = "",
    extra: dict[str, Any] | None = None,
    timeline: dict[str, Any] | None = None,
) -> Job:
    """Persist a job and queue it once the row is committed (never before: a worker could
    otherwise pick up a job id that does not exist yet).

    ``admission`` is the grant of an admitted request (inference.admission.ratelimit.Ticket.grant):
    if the job cannot be created, it is released here; once created, the job releases it when
    it ends. ``extra``: protocol fields of the row (``previous_id``, ``store``, ``background``,
    ``metadata``) and ``group``: the jobs of one request's choices (n > 1), placed together.
    ``timeline``: the gateway's side of the request's timeline (``received_at`` and
    ``admitted_at`` as epoch seconds, ``admission_wait_ms``, ``admission_waited_for``)."""
    now = timezone.now()
    extra = extra or {}
    timeline = timeline or {}
    try:
        for attempt in (1, 2):
            placement = affinity_place(
                model=model,
                session_id=session_id,
                previous_id=extra.get("previous_id"),
                group=extra.get("group"),
            )
            try:
                with transaction.atomic():
                    job = Job.objects.create(
                        user=user,
                        api_key_id=api_key_id,
                        model=model.name,
                        kind=kind,
                        input=input,
                        params=params.as_dict(),
                        source=source,
                        prompt_tokens=prompt_tokens,
                        priority=priority,
                        admission=admission or {},
                        session_id=session_id,
                        model_version_id=model.version_id,
                        deadline_at=now + timedelta(seconds=settings.SLUICE_JOB_TIMEOUT_S),
                        request_id=request_id[:128],
                        previous_id=extra.get("previous_id"),
                        store=bool(extra.get("store", True)),
                        background=bool(extra.get("background", False)),
                        metadata=extra.get("metadata") or {},
                        received_at=_from_epoch(timeline.get("received_at")),
                        admitted_at=_from_epoch(timeline.get("admitted_at")),
                        admission_wait_ms=timeline.get("admission_wait_ms"),
                        admission_waited_for=str(timeline.get("admission_waited_for") or "")[:16],
                        routed_worker=placement.worker[:200],
                        affinity=placement.affinity.value if placement.affinity else "",
                    )
                    # The stream exists before anyone can read it; a Redis failure rolls the row back.
                    get_streams().open(str(job.id))
                    transaction.on_commit(
                        functools.partial(
                            job_publish, job_id=job.id, queue=placement.queue, priority=priority
                        ),
                        robust=True,
                    )
                break
            except IntegrityError:
                # The version was deleted between routing and this insert (Django checks
                # the foreign key at commit): route among the versions there are now, once.
                gone = (
                    model.version_id is not None
                    and not ModelVersion.objects.filter(pk=model.version_id).exists()
                )
                if attempt == 2 or not gone:
                    raise
                registry_invalidate()
                rerouted = route(model.name, f"u{user.pk}")
                if rerouted is None:
                    raise VersionGone(model.name) from None
                model = rerouted
    except BaseException:
        if admission:
            admission_release(grant=admission, used_tokens=0)
        raise
    logger.info("job %s created for %s (request %s)", job.id, model.key, request_id or "-")
    return job


def _from_epoch(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None
