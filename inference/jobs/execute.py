"""A worker runs a job: it loads the job's version, takes the job's lease (one attempt at a
time across the fleet), claims the row, builds the prompt, answers from the result cache or
submits to the engine, renews the lease while the engine works, and finishes the job.

The worker's runtime is handed in by the task (``inference.tasks.run_job``): this module
never reaches for the process's runtime itself."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from inference.batching import FinishReason, SequenceRequest
from inference.cache import replay_deltas, result_cache_get
from inference.chat.services import session_record_turn
from inference.jobs.finish import finish_without_run, job_finish, record_outcome, recorded_messages
from inference.jobs.prompt import RENDERED_MAX_CHARS, job_prompt
from inference.jobs.retry import job_dead_letter
from inference.jobs.settle import job_settle
from inference.jobstream import StreamEntry
from inference.models import CachedResult, DeadLetterReason, Job, JobFinish, JobStatus
from inference.observability.recording import record_cache
from inference.prompts import ChatTemplateError, ModelFilesError
from inference.sampling_params import SamplingParams
from inference.store import get_streams
from inference.streams import Progress
from inference.textutil import pg_safe
from inference.versions.registry import ServedModel, version_by_id

if TYPE_CHECKING:
    from inference.engine import Engine
    from inference.worker.runtime import WorkerRuntime

logger = logging.getLogger(__name__)


def job_execute(*, job_id: str, worker: str, runtime: Callable[[], WorkerRuntime]) -> None:
    """Run one job on this worker's engine (``runtime``: the worker's, asked for only once the
    job needs running). Idempotent: a finished job, or one that another
    live worker holds the lease on, is left alone; an abandoned one resumes from its stream."""
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        logger.warning("job %s does not exist; dropping its message", job_id)
        return
    if job.is_terminal:
        # A redelivery of a finished job: make sure its stream says so (the end entry may not
        # have been written if Redis went down as the job ended).
        if get_streams().ensure_end(
            job_id,
            StreamEntry.end(
                status=job.status, finish_reason=job.finish_reason, usage=job.usage, error=job.error
            ),
        ):
            logger.warning("job %s: wrote its missing end entry", job_id)
        return
    if (
        job.status == JobStatus.QUEUED
        and job.next_attempt_at is not None
        and job.next_attempt_at > timezone.now()
    ):
        return  # waiting out its backoff: the reconciler publishes it when it is due
    # Only now: a message that needs nothing run must not start a runtime (it loads models).
    loaded_runtime = runtime()
    # Load its version before taking the lease: loading can take longer than a lease lives.
    model = version_by_id(job.model_version_id, job.model)
    if model is not None and loaded_runtime.serves(model.name):
        loaded_runtime.ensure(model)
    streams = get_streams()
    lease_ttl = settings.SLUICE_JOB_LEASE_S
    token = uuid.uuid4().hex
    if not streams.lease_acquire(job_id, token, lease_ttl):
        logger.info("job %s is held by another worker; leaving it", job_id)
        return
    try:
        now = timezone.now()
        claimed = Job.objects.filter(id=job_id, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).update(
            status=JobStatus.RUNNING,
            attempts=F("attempts") + 1,
            started_at=Coalesce(F("started_at"), now),
            worker=worker[:200],
        )
        if not claimed:
            return
        # The lease makes this attempt the only writer: mirror the UPDATE instead of re-reading.
        job.status, job.attempts, job.started_at = JobStatus.RUNNING, job.attempts + 1, job.started_at or now
        job.worker = worker[:200]
        streams.clear_requeued(job_id)
        _run_claimed(job=job, token=token, runtime=loaded_runtime, model=model)
    finally:
        streams.lease_release(job_id, token)


def _run_claimed(*, job: Job, token: str, runtime: WorkerRuntime, model: ServedModel | None) -> None:
    streams = get_streams()
    job_id = str(job.id)
    attempt = job.attempts
    now = timezone.now()
    if job.cancel_requested_at is not None or streams.cancel_requested(job_id):
        finish_without_run(job=job, token=token, status=JobStatus.CANCELLED, reason=JobFinish.CANCELLED)
        return
    allowed = model.attempts_allowed if model is not None else settings.SLUICE_MAX_ATTEMPTS
    if attempt > allowed:
        # A late redelivery of a job whose attempts are used up (its workers kept dying).
        job_dead_letter(
            job_id=job.id,
            reason=DeadLetterReason.WORKER_LOST,
            error=f"gave up after {attempt - 1} attempts",
            token=token,
        )
        return
    if job.deadline_at is not None and now >= job.deadline_at:
        finish_without_run(
            job=job,
            token=token,
            status=JobStatus.FAILED,
            reason=JobFinish.DEADLINE,
            error="deadline exceeded",
        )
        return
    if model is None or not runtime.serves(model.name):
        finish_without_run(
            job=job,
            token=token,
            status=JobStatus.FAILED,
            reason=JobFinish.ERROR,
            error=f"model {job.model!r} (version {job.model_version_id}) is not served here",
        )
        return
    loaded = runtime.ensure(model)
    if loaded.engine is None:
        # Not retried: a version that cannot load fails its jobs fast, so that its circuit
        # breaker opens and a failing canary is rolled back (inference/versions/health.py).
        finish_without_run(
            job=job,
            token=token,
            status=JobStatus.FAILED,
            reason=JobFinish.LOAD_FAILED,
            error=f"model version {model.key} could not be loaded: {loaded.error}",
            version=model,
        )
        return
    runtime.job_started(model.key)
    try:
        _run_on(job=job, token=token, model=model, engine=loaded.engine)
    finally:
        runtime.job_done(model.key)


def _run_on(*, job: Job, token: str, model: ServedModel, engine: Engine) -> None:
    streams = get_streams()
    job_id = str(job.id)
    attempt = job.attempts
    now = timezone.now()
    try:
        plan = job_prompt(job=job, model=model)
    except (ChatTemplateError, ModelFilesError, KeyError, TypeError, ValueError) as exc:
        finish_without_run(
            job=job, token=token, status=JobStatus.FAILED, reason=JobFinish.ERROR, error=f"bad input: {exc}"
        )
        return
    # return_token_ids: the prompt's ids as built here (history, retrieval and template applied).
    shown = plan.prompt_ids if job.input.get("return_token_ids") else None
    if not streams.append(job_id, StreamEntry.start(attempt, prompt_ids=shown), lease_token=token):
        return
    progress = streams.progress(job_id) if attempt > 1 else Progress()
    cached = None
    if plan.cache_key and not progress.token_ids:
        cached = result_cache_get(user_id=job.user_id, key=plan.cache_key)
        record_cache(model=job.model, version=_version_label(job), hit=cached is not None)
        if cached is not None:
            plan.citations = list(cached.citations)
    if plan.citations and not progress.cited:
        # Before any token: clients show the sources first.
        Job.objects.filter(id=job.id).update(citations=plan.citations)
        streams.append(job_id, StreamEntry.cite(plan.citations), lease_token=token)
    if cached is not None:
        _finish_from_cache(job=job, token=token, entry=cached, model=model)
        return
    prompt_ids = plan.prompt_ids
    params = SamplingParams.from_dict(job.params)
    if progress.prompt_logprobs_sent:
        # A redelivered job whose first attempt already streamed the prompt's
        # log-probabilities does not compute them again.
        params = replace(params, prompt_logprobs=None)
    remaining = (job.deadline_at - now).total_seconds() if job.deadline_at else settings.SLUICE_JOB_TIMEOUT_S
    request = SequenceRequest(
        key=job_id,
        prompt_ids=prompt_ids,
        params=params,
        resume_ids=progress.token_ids,
        resume_text=progress.text,
        deadline=time.monotonic() + remaining,
        priority=job.priority,
        meta={"lease": token},
    )
    handle = engine.submit(request)
    # While the engine prefills (not before: the row write would add to the time to first token).
    Job.objects.filter(id=job.id).update(rendered_prompt=pg_safe(plan.rendered[:RENDERED_MAX_CHARS]))
    # Give the database connection back to the pool while the engine works: a worker holds
    # max_batch_size tasks at once, far more than it needs connections.
    connection.close()
    lease_ttl = settings.SLUICE_JOB_LEASE_S
    while not handle.wait(lease_ttl / 3):
        if not streams.lease_renew(job_id, token, lease_ttl):
            logger.warning("job %s: lease lost; another worker owns it now", job_id)
            engine.cancel(job_id, FinishReason.LEASE_LOST)
            handle.wait()
            return
    result = handle.result
    assert result is not None
    if job_finish(job=job, attempt=attempt, token=token, result=result, progress=progress, plan=plan):
        record_outcome(model, result)


def _version_label(job: Job) -> str:
    version = version_by_id(job.model_version_id, job.model)
    return version.label if version is not None else "default"


def _finish_from_cache(*, job: Job, token: str, entry: CachedResult, model: ServedModel) -> None:
    """A deterministic request seen before: answer with the stored result, no generation."""
    now = timezone.now()
    usage = {
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "total_tokens": entry.prompt_tokens + entry.completion_tokens,
    }
    updated = Job.objects.filter(id=job.id, attempts=job.attempts, status=JobStatus.RUNNING).update(
        status=JobStatus.SUCCEEDED,
        output_text=entry.output_text,
        finish_reason=entry.finish_reason,
        prompt_tokens=entry.prompt_tokens,
        completion_tokens=entry.completion_tokens,
        cache_hit=True,
        first_token_at=now,
        finished_at=now,
    )
    if not updated:
        return
    streams = get_streams()
    # Token by token, as the original streamed, in one round trip per 256 tokens.
    deltas = replay_deltas(output_text=entry.output_text, token_ids=entry.token_ids, decode=model.info.decode)
    items: list[tuple[str, str, StreamEntry | None]] = []
    for position, (token_id, text) in enumerate(deltas):
        logprob = entry.logprobs[position] if position < len(entry.logprobs) else 0.0
        known = token_id >= 0
        items.append(
            (
                str(job.id),
                token,
                StreamEntry.token(
                    text=text,
                    token_ids=[token_id] if known else [],
                    logprobs=[logprob] if known else [],
                    completion_tokens=position + 1,
                ),
            )
        )
    for start in range(0, len(items), 256):
        streams.publish(items[start : start + 256])
    streams.finish(
        str(job.id),
        StreamEntry.end(
            status=JobStatus.SUCCEEDED, finish_reason=entry.finish_reason, usage=usage, cache_hit=True
        ),
        lease_token=token,
    )
    job.status, job.output_text = JobStatus.SUCCEEDED, entry.output_text
    if not job.params.get("choice"):
        session_record_turn(job=job, messages=recorded_messages(job), reply=entry.output_text)
    # Nothing was generated: everything reserved beyond the prompt comes back.
    job_settle(job=job, job_id=job.id, used_tokens=entry.prompt_tokens, ran=True)
