"""Jobs (read-only; cancel) and dead letters (requeue, discard)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from unfold.admin import ModelAdmin

from inference.jobs.cancel import job_cancel
from inference.jobs.retry import deadletter_discard, deadletter_requeue
from inference.models import (
    DeadLetter,
    Job,
)
from inference.selectors import job_timings


def _queued_note(t: dict[str, Any]) -> str:
    affinity = {
        "pinned": f"published to {t['routed_worker']}'s own queue: the turn before ran there",
        "busy": "published to the shared queue: the worker of the turn before was too busy",
        "gone": "published to the shared queue: the worker of the turn before was gone",
    }
    return affinity.get(t["affinity"] or "", "job created, published to its model's queue")


@admin.register(Job)
class JobAdmin(ModelAdmin):
    list_display = (
        "id",
        "user",
        "model",
        "model_version",
        "source",
        "status",
        "finish_reason",
        "completion_tokens",
        "queued_at",
        "duration",
    )
    list_filter = ("status", "model", "model_version", "source", "finish_reason", "cache_hit")
    search_fields = ("id", "user__username", "request_id")
    date_hierarchy = "queued_at"
    list_select_related = ("user",)
    actions = ["cancel"]
    readonly_fields = [field.name for field in Job._meta.fields] + ["timeline", "prompt_rendered"]
    fieldsets = (
        (None, {"fields": ("id", "user", "api_key", "model", "model_version", "source", "kind", "status")}),
        ("Timeline (ms)", {"fields": ("timeline",)}),
        (
            "Input and output",
            {"fields": ("input", "params", "output_text", "finish_reason", "error", "citations", "cache_hit")},  # noqa: E501
        ),
        ("Prompt as the worker rendered it (staff only)", {"fields": ("prompt_rendered",)}),
        (
            "Details",
            {
                "classes": ("collapse",),
                "fields": tuple(
                    name
                    for name in (field.name for field in Job._meta.fields)
                    if name
                    not in {
                        "id", "user", "api_key", "model", "model_version", "source", "kind", "status",
                        "input", "params", "output_text", "finish_reason", "error", "citations",
                        "cache_hit", "rendered_prompt",
                    }
                ),
            },
        ),
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    @admin.display(description="timeline")
    def timeline(self, obj: Job) -> str:
        t = job_timings(obj)
        start = obj.received_at or obj.queued_at
        wait = t["admission_wait_ms"]
        why = (
            f" (waited for {t['admission_waited_for'].replace('_', ' ')})"
            if t["admission_waited_for"]
            else ""
        )
        steps = [
            ("received", obj.received_at, "at the gateway"),
            ("admitted", obj.admitted_at, f"admission wait {wait} ms{why}" if wait is not None else ""),
            ("queued", obj.queued_at, _queued_note(t)),
            (
                "started",
                obj.started_at,
                f"worker {t['worker'] or '-'}, version {t['version'] or '-'}, attempt {t['attempt']}"
                + (f", upstream {t['served_by']}" if t["served_by"] else ""),
            ),
            ("first token", obj.first_token_at, f"time to first token {t['time_to_first_token_ms']} ms"),
            (
                "finished",
                obj.finished_at,
                f"{obj.status}, {t['finish_reason'] or '-'}, {t['tokens_streamed']} tokens"
                + (f", error: {obj.error}" if obj.error else ""),
            ),
        ]
        # A step that has not happened says so (a running job has no first token yet: its note
        # used to read "time to first token None ms"). Times never wrap (nowrap cells).
        pending = "not yet" if obj.finished_at is None else "-"
        rows = format_html_join(
            "",
            '<tr><td class="pr-4 font-semibold" style="white-space: nowrap">{}</td>'
            '<td class="pr-4" style="white-space: nowrap">{}</td>'
            '<td class="pr-4 text-right" style="white-space: nowrap">{}</td><td>{}</td></tr>',
            (
                (
                    label,
                    timezone.localtime(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if at else pending,
                    f"+{round((at - start).total_seconds() * 1000)} ms" if at and start else "-",
                    detail if at else "-",
                )
                for label, at, detail in steps
            ),
        )
        return format_html('<table class="text-sm" id="job-timeline">{}</table>', rows)

    @admin.display(description="rendered prompt")
    def prompt_rendered(self, obj: Job) -> str:
        if not obj.rendered_prompt:
            return "-"
        return format_html(
            '<pre class="whitespace-pre-wrap text-xs" id="rendered-prompt">{}</pre>', obj.rendered_prompt
        )

    @admin.display(description="duration")
    def duration(self, obj: Job) -> str:
        if obj.finished_at and obj.queued_at:
            return f"{(obj.finished_at - obj.queued_at).total_seconds():.2f}s"
        return "-"

    @admin.action(description="Cancel selected jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        count = 0
        for job in queryset:
            if not job.is_terminal:
                job_cancel(job=job)
                count += 1
        self.message_user(request, f"Cancellation requested for {count} job(s).")


class DeadLetterStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "open"), ("requeued", "requeued"), ("discarded", "discarded")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        value = self.value()
        if value == "open":
            return queryset.filter(requeued_at__isnull=True, discarded_at__isnull=True)
        if value == "requeued":
            return queryset.filter(requeued_at__isnull=False, discarded_at__isnull=True)
        if value == "discarded":
            return queryset.filter(discarded_at__isnull=False)
        return queryset


@admin.register(DeadLetter)
class DeadLetterAdmin(ModelAdmin):
    """Jobs that used up their retries: requeue (same id, same stream) or discard."""

    list_display = (
        "job",
        "model",
        "reason",
        "attempts",
        "state",
        "created_at",
        "requeue_count",
        "handled_by",
    )
    list_filter = (DeadLetterStateFilter, "reason", "model", "created_at")
    search_fields = ("job__id", "error", "job__user__username")
    date_hierarchy = "created_at"
    actions = ["requeue", "discard"]
    readonly_fields = [field.name for field in DeadLetter._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    @admin.display(description="state")
    def state(self, obj: DeadLetter) -> str:
        return obj.state

    @admin.action(description="Requeue selected jobs (same id and stream)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        actor = getattr(request.user, "username", "admin")
        done = sum(deadletter_requeue(letter=letter, actor=actor) for letter in queryset)
        self.message_user(request, f"Requeued {done} job(s).")

    @admin.action(description="Discard selected dead letters")
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        actor = getattr(request.user, "username", "admin")
        for letter in queryset:
            deadletter_discard(letter=letter, actor=actor)
        self.message_user(request, f"Discarded {queryset.count()} dead letter(s).", messages.INFO)
