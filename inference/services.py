"""Job writes: create, publish, cancel, execute (worker side), finish, reconcile."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from inference.admission.ratelimit import MAX_TIER
from inference.admission.services import admission_release
from inference.affinity import affinity_reconcile
from inference.affinity import place as affinity_place
from inference.batching import FinishReason, SequenceRequest
from inference.cache import cache_key, is_deterministic, replay_deltas, result_cache_get, result_cache_put
from inference.chat.prompting import ContextPassage, assemble, profile_text
from inference.chat.selectors import profile_attributes, response_history, session_history
from inference.chat.services import session_record_turn
from inference.engine import SequenceResult
from inference.jobstream import StreamEntry
from inference.metrics import record_cache, record_retrieval
from inference.models import (
    CachedResult,
    DeadLetter,
    DeadLetterReason,
    Job,
    JobFinish,
    JobKind,
    JobStatus,
    ModelVersion,
)
from inference.prompts import ChatTemplateError, ModelFilesError
from inference.rag.selectors import Hit, chunks_search
from inference.rag.services import local_embedder
from inference.sampling_params import SamplingParams
from inference.store import get_streams
from inference.streams import Progress, cancel_key, stream_key
from inference.textutil import pg_safe
from inference.tools.calls import ToolPlan
from inference.usage import job_ended
from inference.versions.health import version_record_outcome
from inference.versions.registry import (
    ServedModel,
    VersionGone,
    queue_for,
    registry_invalidate,
    version_by_id,
    version_queue,
)
from inference.versions.routing import route

logger = logging.getLogger(__name__)


# Engine finish reasons as stored on the job (the APIs map them to their own vocabularies).


@dataclass
class PromptPlan:
    """What a job's model input turned out to be (DESIGN.md §1 step 5)."""

    prompt_ids: list[int]
    citations: list[dict[str, Any]] = field(default_factory=list)
    knowledge_base_ids: list[str] = field(default_factory=list)
    cache_key: str | None = None
    #: The model input as text (template applied): shown to staff on the job's admin page.
    rendered: str = ""


RENDERED_MAX_CHARS = 200_000


def job_prompt(*, job: Job, model: ServedModel) -> PromptPlan:
    """The prompt a job runs. Completions: the raw prompt. Chat: the profile and the chunks
    retrieved from the named knowledge bases in the system message, the session's history,
    the request's messages — trimmed to the context window minus ``max_tokens``."""
    info = model.info
    if job.kind != JobKind.CHAT:
        if "prompt_ids" in job.input:  # a client that sent token ids
            ids = [int(i) for i in job.input["prompt_ids"]]
        else:
            ids = info.completion_prompt_ids(job.input["prompt"])
        truncate = job.params.get("truncate")
        if truncate:
            ids = ids[-int(truncate) :]  # TGI's truncate: keep the end of the prompt
        plan = PromptPlan(prompt_ids=ids, rendered=info.decode(ids))
    else:
        plan = _chat_prompt(job=job, model=model)
    if is_deterministic(job.params):
        plan.cache_key = cache_key(model=model.cache_name, prompt_ids=plan.prompt_ids, params=job.params)
    return plan


def _chat_prompt(*, job: Job, model: ServedModel) -> PromptPlan:
    info = model.info
    new_messages: list[dict[str, str]] = job.input["messages"]
    if job.input.get("instructions"):  # Responses: instructions lead, and are not history
        new_messages = [{"role": "system", "content": job.input["instructions"]}, *new_messages]
    kb_ids = [str(i) for i in job.input.get("knowledge_base_ids") or []]
    if job.session_id:
        history = session_history(session_id=job.session_id)
    elif job.previous_id:
        history = response_history(job_id=job.previous_id)
    else:
        history = []
    hits: list[Hit] = []
    if kb_ids:
        query = next((m["content"] for m in reversed(new_messages) if m["role"] == "user"), "")
        if query.strip():
            rag = job.input.get("rag") or {}
            began = time.monotonic()
            vector = local_embedder().embed([query])[0]
            hits = chunks_search(
                kb_ids=kb_ids,
                embedding=vector,
                top_k=int(rag.get("top_k") or settings.SLUICE_RAG_TOP_K),
                min_score=float(rag.get("min_score", settings.SLUICE_RAG_MIN_SCORE)),
            )
            record_retrieval(model=job.model, seconds=time.monotonic() - began)
    budget = info.context_length - int(job.params["max_tokens"])
    plan = job.input.get("tool_plan")
    tools = ToolPlan.from_dict(plan).tools if plan and ToolPlan.from_dict(plan).rendered else None
    assembled = assemble(
        new_messages=new_messages,
        history=history,
        profile=profile_text(profile_attributes(user_id=job.user_id)),
        passages=[ContextPassage(document=hit.document, text=hit.text) for hit in hits],
        fits=lambda messages: len(info.chat_prompt_ids(messages, tools=tools)) <= budget,
    )
    ids = info.chat_prompt_ids(assembled.messages, tools=tools)
    truncate = job.params.get("truncate")
    if truncate:
        ids = ids[-int(truncate) :]
    return PromptPlan(
        prompt_ids=ids,
        rendered=info.render_chat(assembled.messages, tools=tools),
        citations=[hit.citation() for hit in hits[: assembled.passages_used]],
        knowledge_base_ids=kb_ids,
    )


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


def celery_priority(tier: int) -> int:
    """Rate-limit tier (higher first) -> kombu Redis priority (0 is consumed first)."""
    return MAX_TIER - max(0, min(MAX_TIER, tier))


def job_publish(*, job_id: uuid.UUID | str, queue: str, priority: int = 0, countdown: float = 0.0) -> None:
    from inference.tasks import run_job

    run_job.apply_async(
        args=[str(job_id)], queue=queue, priority=celery_priority(priority), countdown=countdown or None
    )
    Job.objects.filter(id=job_id, published_at__isnull=True).update(
        published_at=timezone.now(), next_attempt_at=None
    )


def _release_admission(job: Job, *, used_tokens: int, ran: bool) -> None:
    """The job reached a terminal state (exactly one caller per job does this)."""
    if not job.admission:
        return
    duration = (timezone.now() - job.queued_at).total_seconds() if ran and job.queued_at else 0.0
    admission_release(grant=job.admission, used_tokens=used_tokens, duration_s=duration)


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
        _release_admission(job, used_tokens=0, ran=False)
        job_ended(job_id=job.id)
    else:
        streams.request_cancel(str(job.id))
    job.refresh_from_db()
    return job


def job_soft_delete(*, job: Job) -> None:
    """Hide a job from its owner (Responses DELETE); the row stays for usage and audit."""
    Job.objects.filter(id=job.id, deleted_at__isnull=True).update(deleted_at=timezone.now())


# --- worker side ----------------------------------------------------------------------


def _wall(mono: float | None, *, now_wall: datetime, now_mono: float) -> datetime | None:
    if mono is None:
        return None
    return now_wall - timedelta(seconds=max(0.0, now_mono - mono))


def job_execute(*, job_id: str, worker: str) -> None:
    """Run one job on this worker's engine. Idempotent: a finished job, or one that another
    live worker holds the lease on, is left alone; an abandoned one resumes from its stream."""
    from inference.worker.runtime import get_runtime

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
    runtime = get_runtime()
    # Load its version before taking the lease: loading can take longer than a lease lives.
    model = version_by_id(job.model_version_id, job.model)
    if model is not None and runtime.serves(model.name):
        runtime.ensure(model)
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
        _run_claimed(job=job, token=token, runtime=runtime, model=model)
    finally:
        streams.lease_release(job_id, token)


def _run_claimed(*, job: Job, token: str, runtime: Any, model: ServedModel | None) -> None:
    streams = get_streams()
    job_id = str(job.id)
    attempt = job.attempts
    now = timezone.now()
    if job.cancel_requested_at is not None or streams.cancel_requested(job_id):
        _finish_without_run(job=job, token=token, status=JobStatus.CANCELLED, reason=JobFinish.CANCELLED)
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
        _finish_without_run(
            job=job,
            token=token,
            status=JobStatus.FAILED,
            reason=JobFinish.DEADLINE,
            error="deadline exceeded",
        )
        return
    if model is None or not runtime.serves(model.name):
        _finish_without_run(
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
        _finish_without_run(
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


def _run_on(*, job: Job, token: str, model: ServedModel, engine: Any) -> None:
    streams = get_streams()
    job_id = str(job.id)
    attempt = job.attempts
    now = timezone.now()
    try:
        plan = job_prompt(job=job, model=model)
    except (ChatTemplateError, ModelFilesError, KeyError, TypeError, ValueError) as exc:
        _finish_without_run(
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
        _record_outcome(model, result)


def _version_label(job: Job) -> str:
    version = version_by_id(job.model_version_id, job.model)
    return version.label if version is not None else "default"


def _record_outcome(model: ServedModel, result: SequenceResult) -> None:
    """The version's health (circuit breaker, canary check) sees every finished generation."""
    if result.finish_reason in (FinishReason.CANCELLED, FinishReason.LEASE_LOST, FinishReason.ABORTED):
        return
    ok = result.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    ttft = None
    if result.first_token_at is not None:
        ttft = max(0.0, result.first_token_at - result.submitted_at)
    version_record_outcome(version=model, ok=ok, ttft_s=ttft)


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
        session_record_turn(job=job, messages=_recorded_messages(job), reply=entry.output_text)
    # Nothing was generated: everything reserved beyond the prompt comes back.
    _release_admission(job, used_tokens=entry.prompt_tokens, ran=True)
    job_ended(job_id=job.id)


def _recorded_messages(job: Job) -> list[dict[str, str]]:
    """The request's own turns, as the session keeps them (system prompts are per request)."""
    if job.kind != JobKind.CHAT:
        return []
    return [m for m in job.input.get("messages", []) if m.get("role") in ("user", "assistant")]


def _finish_without_run(
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
        _release_admission(job, used_tokens=0 if job.attempts <= 1 else reserved, ran=False)
        if version is not None and status == JobStatus.FAILED:
            version_record_outcome(version=version, ok=False)
        job_ended(job_id=job.id)


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
        model = version_by_id(job.model_version_id, job.model)
        return job_retry_later(
            job=job,
            token=token,
            reason=DeadLetterReason.UPSTREAM_ERROR,
            error=result.error or "upstream error",
            allowed=model.attempts_allowed if model is not None else settings.SLUICE_MAX_ATTEMPTS,
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
            session_record_turn(job=job, messages=_recorded_messages(job), reply=output)
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
    _release_admission(job, used_tokens=used, ran=True)
    job_ended(job_id=job.id)
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
        if job is not None and job.admission:
            # It may have run for a while before its worker died: refund nothing.
            _release_admission(job, used_tokens=int(job.admission.get("reserved_tokens", 0)), ran=False)
        job_ended(job_id=job_id)
    return bool(updated)


# --- retries and dead letters ---------------------------------------------------------------


def retry_delay_s(attempts: int) -> float:
    """Exponential backoff before attempt ``attempts + 1``: base, 2x base, 4x base, ... capped."""
    base, cap = settings.SLUICE_RETRY_BACKOFF_S, settings.SLUICE_RETRY_MAX_BACKOFF_S
    return float(min(cap, base * 2 ** max(0, attempts - 1)))


def _attempt_entry(*, attempt: int, worker: str, reason: str, error: str) -> dict[str, Any]:
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
        _attempt_entry(attempt=job.attempts, worker=job.worker, reason=reason, error=error),
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
        _attempt_entry(attempt=job.attempts, worker=job.worker, reason=reason, error=error),
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
    if job.admission:
        _release_admission(job, used_tokens=int(job.admission.get("reserved_tokens", 0)), ran=False)
    job_ended(job_id=job.id)
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
        queue = _job_queue(job.model, job.model_version_id)
        transaction.on_commit(
            lambda: job_publish(job_id=job.id, queue=queue, priority=job.priority), robust=True
        )
    logger.warning("job %s requeued from the dead letters by %s", letter.job_id, actor)
    return True


def deadletter_discard(*, letter: DeadLetter, actor: str) -> None:
    DeadLetter.objects.filter(pk=letter.pk, discarded_at__isnull=True).update(
        discarded_at=timezone.now(), handled_by=actor[:150]
    )


def _attempts_allowed(model_name: str, version_id: int | None) -> int:
    version = version_by_id(version_id, model_name)
    return version.attempts_allowed if version is not None else settings.SLUICE_MAX_ATTEMPTS


def _job_queue(model_name: str, version_id: int | None) -> str:
    return queue_for(model_name) if version_id is None else version_queue(version_id)


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
            job_publish(job_id=job_id, queue=_job_queue(model_name, version_id), priority=priority)
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
        allowed = _attempts_allowed(model_name, version_id)
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
            entry = _attempt_entry(
                attempt=attempts, worker=worker, reason=DeadLetterReason.WORKER_LOST, error="worker lost"
            )
            job_row = Job.objects.filter(id=job_id).only("attempt_log").first()
            if job_row is not None:
                Job.objects.filter(id=job_id).update(attempt_log=[*(job_row.attempt_log or []), entry])
            job_publish(
                job_id=job_id, queue=_job_queue(model_name, version_id), priority=priority, countdown=delay
            )
            counts["requeued"] += 1
    return counts
