"""A job's end: the final state written once (only by the attempt that still owns the job),
the stream ended, the session's turn and the result cache written, the admission settled, the
version's health told."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from inference.batching import FinishReason
from inference.cache import result_cache_put
from inference.chat.services import session_record_turn
from inference.engine import SequenceResult
from inference.jobs.prompt import PromptPlan
from inference.jobs.publish import attempts_allowed
from inference.jobs.retry import job_retry_later
from inference.jobs.settle import job_settle
from inference.jobstream import StreamEntry
from inference.models import DeadLetterReason, Job, JobFinish, JobKind, JobStatus
from inference.store import get_streams
from inference.streams import Progress
from inference.textutil import pg_safe
from inference.versions.health import version_record_outcome
from inference.versions.registry import ServedModel


def _wall(mono: float | None, *, now_wall: datetime, now_mono: float) -> datetime | None:
    if mono is None:
        return None
    return now_wall - timedelta(seconds=max(0.0, now_mono - mono))


def record_outcome(model: ServedModel, result: SequenceResult) -> None:
    """The version's health (circuit breaker, canary check) sees every finished generation."""
    if result.finish_reason in (FinishReason.CANCELLED, FinishReason.LEASE_LOST, FinishReason.ABORTED):
        return
    ok = result.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    ttft = None
    if result.first_token_at is not None:
        ttft = max(0.0, result.first_token_at - result.submitted_at)
    version_record_outcome(version=model, ok=ok, ttft_s=ttft)


def recorded_messages(job: Job) -> list[dict[str, str]]:
    """The request's own turns, as the session keeps them (system prompts are per request)."""
    if job.kind != JobKind.CHAT:
        return []
    return [m for m in job.input.get("messages", []) if m.get("role") in ("user", "assistant")]


def finish_without_run(
    *, job: Job, token: str, status: str, reason: str, error: str = "", version: ServedModel | None = None
) -> None:
    now = timezone.now()
    updated = Job.objects.filter(id=job.id, attempts=job.attempts, status=JobStatus.RUNNING).update(
        status=status, finish_reason=reason, error=pg_safe(error), finished_at=now
    )
    if updated:
        get_streams().finish(
            str(job.id),
            StreamEntry.end(status=status, finish_reason=reason, usage=None, error=error),
            lease_token=token,
        )
        # A first attempt generated nothing; a later one may have streamed tokens before.
        reserved = int(job.admission.get("reserved_tokens", 0)) if job.admission else 0
        job_settle(job=job, job_id=job.id, used_tokens=0 if job.attempts <= 1 else reserved, ran=False)
        if version is not None and status == JobStatus.FAILED:
            version_record_outcome(version=version, ok=False)


def _outcome(result: SequenceResult) -> tuple[str, str]:
    reason = result.finish_reason
    if reason is FinishReason.STOP:
        return JobStatus.SUCCEEDED, (JobFinish.STOP_SEQUENCE if result.stopped_by_string else JobFinish.EOS)
    if reason is FinishReason.LENGTH:
        return JobStatus.SUCCEEDED, JobFinish.LENGTH
    if reason is FinishReason.CONTENT_FILTER:
        return JobStatus.SUCCEEDED, JobFinish.CONTENT_FILTER
    if reason is FinishReason.CANCELLED:
        return JobStatus.CANCELLED, JobFinish.CANCELLED
    if reason is FinishReason.DEADLINE:
        return JobStatus.FAILED, JobFinish.DEADLINE
    return JobStatus.FAILED, JobFinish.ERROR


def job_finish(
    *,
    job: Job,
    attempt: int,
    token: str,
    result: SequenceResult,
    progress: Progress,
    plan: PromptPlan | None = None,
) -> bool:
    """Write the final state (only if this attempt still owns the job), then end the stream;
    a successful turn goes into its session and, if deterministic, into the result cache."""
    if result.finish_reason in (FinishReason.LEASE_LOST, FinishReason.ABORTED):
        return False  # another attempt finishes it
    if result.finish_reason is FinishReason.ERROR and result.retryable:
        return job_retry_later(
            job=job,
            token=token,
            reason=DeadLetterReason.UPSTREAM_ERROR,
            error=result.error or "upstream error",
            allowed=attempts_allowed(job.model, job.model_version_id),
        )
    status, reason = _outcome(result)
    now_wall, now_mono = timezone.now(), time.monotonic()
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    first_token_at = _wall(result.first_token_at, now_wall=now_wall, now_mono=now_mono)
    updated = Job.objects.filter(id=job.id, attempts=attempt, status=JobStatus.RUNNING).update(
        status=status,
        output_text=pg_safe(progress.text + result.text),
        finish_reason=reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        error=pg_safe(result.error or ""),
        served_by=result.served_by,
        first_token_at=Coalesce(F("first_token_at"), first_token_at)
        if first_token_at
        else F("first_token_at"),
        finished_at=now_wall,
    )
    if not updated:
        return False
    get_streams().finish(
        str(job.id),
        StreamEntry.end(status=status, finish_reason=reason, usage=usage, error=result.error or ""),
        lease_token=token,
    )
    output = pg_safe(progress.text + result.text)
    if status == JobStatus.SUCCEEDED:
        if not job.params.get("choice"):  # n > 1: the first choice is the session's answer
            session_record_turn(job=job, messages=recorded_messages(job), reply=output)
        if plan is not None and plan.cache_key:
            result_cache_put(
                user_id=job.user_id,
                key=plan.cache_key,
                model=job.model,
                output_text=output,
                finish_reason=reason,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                knowledge_base_ids=plan.knowledge_base_ids,
                citations=plan.citations,
                token_ids=progress.token_ids + result.token_ids,
                logprobs=progress.logprobs + result.logprobs,
            )
    # A later choice of an n > 1 request shares its prompt with the first: only its own tokens.
    used = usage["completion_tokens"] if job.params.get("choice") else usage["total_tokens"]
    job_settle(job=job, job_id=job.id, used_tokens=used, ran=True)
    return True


def job_fail(*, job_id: uuid.UUID | str, error: str, reason: str = JobFinish.ERROR) -> bool:
    """Fail a job that no worker holds (reconciler: too many attempts, deadline in the queue)."""
    now = timezone.now()
    updated = Job.objects.filter(id=job_id, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).update(
        status=JobStatus.FAILED, finish_reason=reason, error=error, finished_at=now
    )
    if updated:
        get_streams().finish(
            str(job_id),
            StreamEntry.end(status=JobStatus.FAILED, finish_reason=reason, usage=None, error=error),
        )
        job = Job.objects.filter(id=job_id).only("id", "admission", "queued_at").first()
        # It may have run for a while before its worker died: refund nothing.
        reserved = int(job.admission.get("reserved_tokens", 0)) if job is not None and job.admission else 0
        job_settle(job=job, job_id=job_id, used_tokens=reserved, ran=False)
    return bool(updated)
