"""Jobs: one inference request, from acceptance to its final text."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobFinish(models.TextChoices):
    """Why a job ended, as its row and its stream's end record it; each protocol maps these
    to its own words (OpenAI's ``stop``, TGI's ``eos_token``). The engine's reasons
    (inference.batching.FinishReason) are turned into these when a job finishes."""

    EOS = "eos"  # the model's end of sequence (or a stop token id, or a complete grammar)
    STOP_SEQUENCE = "stop_sequence"  # a stop string matched
    LENGTH = "length"  # max_tokens or the context window
    CONTENT_FILTER = "content_filter"  # an output guard stopped it
    CANCELLED = "cancelled"
    DEADLINE = "deadline"
    ERROR = "error"
    LOAD_FAILED = "load_failed"  # its version could not be loaded


class JobKind(models.TextChoices):
    CHAT = "chat"  # messages -> chat template
    COMPLETION = "completion"  # raw prompt


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    api_key = models.ForeignKey(
        "gateway.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    model = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=JobKind.choices)
    # {"messages": [...]} or {"prompt": "..."}: exactly what the client sent, validated.
    input = models.JSONField()
    # Sampling parameters (max_tokens, temperature, top_p, top_k, seed, stop) after defaults.
    params = models.JSONField(default=dict)
    # Which API created it (openai.chat, openai.completions, tgi, jobs, ws): shapes the output.
    source = models.CharField(max_length=32, default="jobs")
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    output_text = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    # The rate-limit tier (0..9, higher first): Celery message priority and engine order.
    priority = models.SmallIntegerField(default=0)
    # What admission reserved for this job (leases, tokens): released when the job ends.
    admission = models.JSONField(default=dict, blank=True)
    # The conversation this turn continues (its history is loaded by the worker).
    session = models.ForeignKey(
        "inference.ChatSession", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    # Chunks retrieved into the prompt: [{document_id, document, chunk_id, chunk_index, score}].
    citations = models.JSONField(default=list, blank=True)
    cache_hit = models.BooleanField(default=False)
    # The version that served it (null: the settings-configured model, SLUICE_MODEL_PATH).
    model_version = models.ForeignKey(
        "inference.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    queued_at = models.DateTimeField(auto_now_add=True, db_index=True)
    published_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    # The client's X-Request-Id (or the one the gateway made up): echoed, logged, searchable.
    request_id = models.CharField(max_length=128, blank=True, db_index=True)
    # OpenAI `metadata` (Responses): up to 16 string pairs the client attaches.
    metadata = models.JSONField(default=dict, blank=True)
    # Responses: the response this one continues (`previous_response_id`); its chain is the history.
    previous = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="continuations"
    )
    # Responses: `store` (retrievable later) and `background` (runs on when the client leaves).
    store = models.BooleanField(default=True)
    background = models.BooleanField(default=False)
    # Responses DELETE: hidden from its owner; the row stays for usage and audit.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The request's timeline (the console's "what did that one slow request wait for"): when the
    # gateway received it, when admission let it in, how long it waited there and for what.
    received_at = models.DateTimeField(null=True, blank=True)
    admitted_at = models.DateTimeField(null=True, blank=True)
    admission_wait_ms = models.PositiveIntegerField(null=True, blank=True)
    admission_waited_for = models.CharField(max_length=16, blank=True, help_text="rate_limit or capacity")
    # Session affinity: the worker whose own queue it was published to ("": the shared queue)
    # and why: pinned (to the worker that ran the turn before), busy or gone (that worker was
    # too loaded or had left: the shared queue), new (nothing before it to be near).
    routed_worker = models.CharField(max_length=200, blank=True)
    affinity = models.CharField(max_length=8, blank=True)
    # The upstream replica that ran it (openai versions): its base URL.
    served_by = models.CharField(max_length=500, blank=True)
    # The exact prompt the worker ran (template, history, profile, retrieved passages): staff only.
    rendered_prompt = models.TextField(blank=True)
    # One entry per attempt that did not finish the job: {attempt, worker, at, reason, error}.
    attempt_log = models.JSONField(default=list, blank=True)
    # A job waiting to be retried after a transient failure is published again at this time.
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-queued_at"]
        indexes = [
            models.Index(fields=["user", "-queued_at"], name="job_user_recent"),
            models.Index(fields=["status", "queued_at"], name="job_status_age"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def usage(self) -> dict[str, int] | None:
        if self.prompt_tokens is None:
            return None
        completion = self.completion_tokens or 0
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


class DeadLetterReason(models.TextChoices):
    WORKER_LOST = "worker_lost", "the worker running it died, every attempt"
    UPSTREAM_ERROR = "upstream_error", "the upstream server failed before the first token"
    PUBLISH_FAILED = "publish_failed", "it could not be queued before its deadline"


class DeadLetter(models.Model):
    """A job that exhausted its retries. It stays failed until an operator requeues it (same
    id, same stream: a client following it sees it continue) or discards the letter."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="dead_letter")
    reason = models.CharField(max_length=32, choices=DeadLetterReason.choices, db_index=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    history = models.JSONField(default=list, blank=True)
    model = models.CharField(max_length=200, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    requeued_at = models.DateTimeField(null=True, blank=True)
    requeue_count = models.PositiveIntegerField(default=0)
    discarded_at = models.DateTimeField(null=True, blank=True)
    handled_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.job_id} ({self.reason})"

    @property
    def state(self) -> str:
        if self.discarded_at is not None:
            return "discarded"
        if self.requeued_at is not None:
            return "requeued"
        return "open"


class UsageDaily(models.Model):
    """Usage per UTC day, user, API key, policy, model and version: one upsert per finished job
    (``inference.observability.usage.job_ended``), so totals are exact sums over the job rows."""

    day = models.DateField(db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage")
    api_key = models.ForeignKey("gateway.ApiKey", on_delete=models.SET_NULL, null=True, blank=True)
    policy = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200)
    version = models.CharField(max_length=64, blank=True)
    requests = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    #: Tokens answered from the result cache (not generated again).
    cached_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=16, decimal_places=6, default=0)

    class Meta:
        ordering = ["-day", "user"]
        verbose_name = "daily usage"
        verbose_name_plural = "usage (daily)"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "user", "api_key", "policy", "model", "version"],
                name="usage_daily_unique",
                nulls_distinct=False,
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.user_id} {self.model}@{self.version}"
