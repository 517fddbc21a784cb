"""Admin: jobs (read-only; cancel), dead letters (requeue, discard), chat sessions with their
messages, profiles, knowledge bases with their documents' ingestion status, the result cache
(clear), and model versions (activate, canary, promote, roll back, drain, retire; health,
breaker, workers; events)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from unfold.admin import ModelAdmin, TabularInline

from dashboard.audit_admin import AuditedAdmin
from inference.cache import result_cache_clear
from inference.jobs.cancel import job_cancel
from inference.jobs.retry import deadletter_discard, deadletter_requeue
from inference.models import (
    CachedResult,
    ChatSession,
    DeadLetter,
    Document,
    Job,
    KnowledgeBase,
    Message,
    ModelVersion,
    ModelVersionEvent,
    UsageDaily,
    UserProfile,
)
from inference.rag.services import document_upload
from inference.selectors import job_timings, version_replicas
from inference.usage import usage_csv, usage_daily_chart
from inference.versions.health import open_breakers, version_stats
from inference.versions.lifecycle import (
    version_activate,
    version_drain,
    version_promote,
    version_retire,
    version_rollback,
)
from inference.versions.registry import all_versions, registry_invalidate, settings_version


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


class MessageInline(TabularInline):
    model = Message
    extra = 0
    fields = ("role", "content", "job", "created_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ChatSession)
class ChatSessionAdmin(ModelAdmin):
    list_display = ("id", "title", "user", "messages_count", "updated_at")
    search_fields = ("id", "title", "user__username")
    list_select_related = ("user",)
    readonly_fields = ("id", "user", "created_at", "updated_at")
    fields = ("id", "title", "user", "created_at", "updated_at")
    inlines = [MessageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ChatSession]:
        return super().get_queryset(request).annotate(message_total=Count("messages"))

    @admin.display(description="messages", ordering="message_total")
    def messages_count(self, obj: ChatSession) -> int:
        return int(getattr(obj, "message_total", 0))


@admin.register(UserProfile)
class UserProfileAdmin(ModelAdmin):
    list_display = ("user", "language", "role", "interests", "updated_at")
    search_fields = ("user__username", "role", "interests")
    autocomplete_fields = ("user",)


class DocumentInline(TabularInline):
    model = Document
    extra = 0
    fields = ("name", "content_type", "status", "chunks_done", "chunks_total", "error", "updated_at")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(AuditedAdmin, ModelAdmin):
    list_display = ("name", "owner", "visibility", "document_count", "version", "updated_at")
    list_filter = ("visibility",)
    search_fields = ("name", "owner__username")
    list_select_related = ("owner",)
    filter_horizontal = ("shared_with_users", "shared_with_groups")
    readonly_fields = ("id", "version", "created_at", "updated_at")
    inlines = [DocumentInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[KnowledgeBase]:
        return super().get_queryset(request).annotate(document_total=Count("documents"))

    @admin.display(description="documents", ordering="document_total")
    def document_count(self, obj: KnowledgeBase) -> int:
        return int(getattr(obj, "document_total", 0))


@admin.register(Document)
class DocumentAdmin(ModelAdmin):
    list_display = ("name", "knowledge_base", "status", "progress", "size_bytes", "updated_at")
    list_filter = ("status", "content_type")
    search_fields = ("name", "knowledge_base__name")
    list_select_related = ("knowledge_base",)
    exclude = ("raw",)
    readonly_fields = [f.name for f in Document._meta.fields if f.name != "raw"]
    actions = ["reingest"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="progress")
    def progress(self, obj: Document) -> str:
        return f"{obj.chunks_done}/{obj.chunks_total}"

    @admin.action(description="Ingest again (failed documents whose upload is kept)")
    def reingest(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        count = 0
        for document in queryset.exclude(raw=None):
            document_upload(
                kb=document.knowledge_base,
                name=document.name,
                raw=bytes(document.raw or b""),
                content_type=document.content_type,
            )
            count += 1
        self.message_user(request, f"Queued {count} document(s) for ingestion.")


@admin.register(CachedResult)
class CachedResultAdmin(ModelAdmin):
    list_display = ("key_short", "user", "model", "hits", "created_at", "last_hit_at")
    list_filter = ("model",)
    search_fields = ("key", "user__username")
    list_select_related = ("user",)
    readonly_fields = [f.name for f in CachedResult._meta.fields]
    actions = ["clear_all"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="key")
    def key_short(self, obj: CachedResult) -> str:
        return obj.key[:16] + "…"

    @admin.action(description="Clear the whole result cache")
    def clear_all(self, request: HttpRequest, queryset: QuerySet[CachedResult]) -> None:
        deleted = result_cache_clear()
        self.message_user(request, f"Cleared {deleted} cached result(s).")


def _heartbeats() -> list[dict[str, Any]]:
    from inference.selectors import worker_heartbeats

    try:
        return worker_heartbeats()
    except Exception:
        return []


def _loaded_on(matches: Callable[[dict[str, Any]], bool]) -> str:
    """The workers that have a version loaded, from their heartbeats."""
    names = []
    for beat in _heartbeats():
        for version in beat.get("versions", []):
            if matches(version):
                state = (
                    f"error: {version['error'][:60]}"
                    if version.get("error")
                    else f"{version.get('running', 0)} running"
                )
                names.append(f"{beat.get('name')} ({state})")
    return ", ".join(names) or "-"


def _health_summary(version_key: str) -> str:
    """A version's health over the window, in one line of the version list."""
    stats = version_stats(version_key)
    if not stats.samples:
        return "-"
    ttft = f", TTFT p99 {stats.ttft_p99_ms:.0f} ms" if stats.ttft_p99_ms is not None else ""
    return f"{stats.samples} jobs, {stats.error_rate:.0%} errors{ttft}"


def _settings_version() -> dict[str, Any]:
    """The version SLUICE_MODEL_NAME/SLUICE_MODEL_PATH serve, as the version list shows it: a
    fresh `make run` serves it and has no row, so without this the list reads "0 versions"."""
    version = settings_version()
    serving = any(v.version_id is None for v in all_versions())
    adopt = {
        "served_name": version.name, "label": "v1", "backend": version.backend, "path": str(version.path),
        "dtype": version.dtype, "tool_parser": version.tool_parser, "status": "draft",
    }  # fmt: skip
    return {
        "key": version.key,
        "name": version.name,
        "backend": version.backend,
        "status": "serving" if serving else "superseded (a version of this name is in the table)",
        "path": version.path,
        "dtype": version.dtype,
        "tool_parser": version.tool_parser,
        "health": _health_summary(version.key),
        "breaker": "OPEN" if open_breakers([version.key]) else "closed",
        "loaded_on": _loaded_on(lambda v: v.get("id") is None and v.get("key") == version.key),
        "adopt_url": f"{reverse('admin:inference_modelversion_add')}?{urlencode(adopt)}",
    }


class ModelVersionEventInline(TabularInline):
    model = ModelVersionEvent
    extra = 0
    fields = ("created_at", "kind", "reason", "actor")
    readonly_fields = fields
    can_delete = False
    ordering = ("-created_at",)
    max_num = 0


@admin.register(ModelVersion)
class ModelVersionAdmin(AuditedAdmin, ModelAdmin):
    list_display = (
        "__str__",
        "backend",
        "status",
        "traffic_weight",
        "health",
        "breaker",
        "upstreams",
        "loaded_on",
        "updated_at",
    )
    list_filter = ("served_name", "status", "backend")
    search_fields = ("served_name", "label", "path", "url")
    readonly_fields = ("created_at", "updated_at", "health_detail", "replica_table")
    fieldsets = (
        (None, {"fields": ("served_name", "label", "status", "traffic_weight", "fallback")}),
        ("Backend", {"fields": ("backend", "path", "dtype", "tool_parser")}),
        (
            "Remote upstream (tgi, openai)",
            {
                "fields": (
                    "url",
                    "replica_urls",
                    "upstream_model",
                    "token_ids",
                    "api_key",
                    "api_key_env",
                    "replica_table",
                )
            },
        ),
        (
            "Limits (0: the settings' defaults)",
            {
                "fields": (
                    "max_batch_size",
                    "max_batch_tokens",
                    "context_length",
                    "prefix_cache_mb",
                    "max_attempts",
                )
            },
        ),
        (
            "Prices per 1M tokens (usage and cost)",
            {"fields": ("price_input_per_mtok", "price_output_per_mtok")},
        ),
        ("Health", {"fields": ("health_detail", "created_at", "updated_at")}),
    )
    inlines = [ModelVersionEventInline]
    list_before_template = "inference/admin/settings_version.html"
    actions = ["activate_stable", "start_canary", "promote", "roll_back", "drain", "retire"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        from django import forms

        form = super().get_form(request, obj, change=change, **kwargs)
        # The upstream token is written, never shown back.
        form.base_fields["api_key"].widget = forms.PasswordInput(render_value=True)
        return form

    def save_model(self, request: HttpRequest, obj: ModelVersion, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        registry_invalidate()

    def _key(self, obj: ModelVersion) -> str:
        return f"{obj.served_name}@{obj.label}"

    @admin.display(description="health (window)")
    def health(self, obj: ModelVersion) -> str:
        return _health_summary(self._key(obj))

    @admin.display(description="health")
    def health_detail(self, obj: ModelVersion) -> str:
        if not obj.pk:
            return "-"
        stats = version_stats(self._key(obj))
        rows = (
            ("jobs in the window", f"{stats.samples} (last {settings.SLUICE_VERSION_WINDOW_S:.0f} s)"),
            ("errors", f"{stats.errors} ({stats.error_rate:.1%})"),
            ("time to first token, p99", "-" if stats.ttft_p99_ms is None else f"{stats.ttft_p99_ms:.0f} ms"),
        )
        body = format_html_join(
            "", '<tr><th class="pr-4 text-left font-normal">{}</th><td>{}</td></tr>', rows
        )
        return format_html('<table class="text-sm" id="health">{}</table>', body)

    @admin.display(description="breaker")
    def breaker(self, obj: ModelVersion) -> str:
        return "OPEN" if open_breakers([self._key(obj)]) else "closed"

    @admin.display(description="upstream replicas")
    def upstreams(self, obj: ModelVersion) -> str:
        replicas = version_replicas(obj)
        if not replicas:
            return "-"
        up = sum(1 for r in replicas if r.state == "closed")
        busy = sum(r.outstanding_requests for r in replicas)
        return f"{up}/{len(replicas)} in rotation, {busy} in flight"

    @admin.display(description="replicas: health and load")
    def replica_table(self, obj: ModelVersion) -> str:
        replicas = version_replicas(obj)
        if not replicas:
            return "-"
        rows = format_html_join(
            "",
            '<tr><td class="pr-4">{}</td><td class="pr-4 font-semibold">{}</td>'
            '<td class="pr-4 text-right">{}</td><td class="pr-4 text-right">{}</td>'
            '<td class="pr-4 text-right">{}</td><td>{}</td></tr>',
            (
                (r.url, r.state, r.outstanding_requests, r.outstanding_tokens, r.failures, r.error or "")
                for r in replicas
            ),
        )
        head = (
            "<tr><th class='pr-4 text-left'>replica</th><th class='pr-4 text-left'>state</th>"
            "<th class='pr-4'>requests</th><th class='pr-4'>tokens</th><th class='pr-4'>failures</th>"
            "<th class='text-left'>last error</th></tr>"
        )
        return format_html('<table class="text-sm" id="replicas">{}{}</table>', mark_safe(head), rows)  # noqa: S308

    @admin.display(description="loaded on (workers)")
    def loaded_on(self, obj: ModelVersion) -> str:
        return _loaded_on(lambda version: version.get("id") == obj.pk)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        return super().changelist_view(
            request, {**(extra_context or {}), "settings_version": _settings_version()}
        )

    def _each(self, request: HttpRequest, queryset: QuerySet[ModelVersion], action: Any, done: str) -> None:
        actor = getattr(request.user, "username", "admin")
        count = 0
        for version in queryset:
            try:
                action(version=version, actor=actor)
                count += 1
            except ValueError as exc:
                self.message_user(request, f"{version}: {exc}", level=messages.ERROR)
        self.message_user(request, f"{done}: {count} version(s).")

    @admin.action(description="Activate as stable (hot switch: workers load it)")
    def activate_stable(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, lambda **kw: version_activate(status="stable", **kw), "Activated")

    @admin.action(description="Start as canary (with its traffic weight)")
    def start_canary(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, lambda **kw: version_activate(status="canary", **kw), "Canary started")

    @admin.action(description="Promote to stable (retires the current stable)")
    def promote(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, version_promote, "Promoted")

    @admin.action(description="Roll back")
    def roll_back(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, version_rollback, "Rolled back")

    @admin.action(description="Drain (no new traffic; running jobs finish)")
    def drain(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, version_drain, "Drained")

    @admin.action(description="Retire (workers unload it once idle)")
    def retire(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, version_retire, "Retired")


@admin.register(ModelVersionEvent)
class ModelVersionEventAdmin(ModelAdmin):
    list_display = ("created_at", "version", "kind", "reason", "actor")
    list_filter = ("kind", "version__served_name")
    search_fields = ("reason", "version__label", "version__served_name")
    readonly_fields = [f.name for f in ModelVersionEvent._meta.fields]
    list_select_related = ("version",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


#: Chart.js options of the usage page's daily chart (stacked tokens, cost on a second axis).
USAGE_CHART_OPTIONS: dict[str, Any] = {
    "responsive": True,
    "maintainAspectRatio": False,
    "animation": False,
    "plugins": {"legend": {"display": True, "align": "end"}},
    "scales": {
        "x": {"stacked": True},
        "y": {"stacked": True, "beginAtZero": True, "title": {"display": True, "text": "tokens"}},
        "cost": {
            "position": "right",
            "beginAtZero": True,
            "grid": {"display": False},
            "title": {"display": True, "text": "cost"},
        },
    },
}


@admin.register(UsageDaily)
class UsageDailyAdmin(ModelAdmin):
    """Daily usage and cost per user, key, policy, model and version (one upsert per finished
    job). The chart above the list draws the filtered rows' daily totals."""

    list_display = (
        "day", "user", "api_key", "policy", "model", "version", "requests", "failed", "prompt_tokens",
        "completion_tokens", "cached_tokens", "cost",
    )  # fmt: skip
    list_filter = ("day", "model", "version", "policy", "user")
    search_fields = ("user__username", "model", "version", "policy", "api_key__name", "api_key__prefix")
    date_hierarchy = "day"
    list_select_related = ("user", "api_key")
    actions = ["export_csv"]
    list_before_template = "dashboard/usage_chart.html"
    readonly_fields = [field.name for field in UsageDaily._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            context["usage_chart"] = usage_daily_chart(context["cl"].queryset)
            # From the context, not a literal in the template: a template literal is not escaped,
            # and its double quotes ended the data-options attribute (the chart never drew).
            context["usage_chart_options"] = json.dumps(USAGE_CHART_OPTIONS)
        return response

    @admin.action(description="Export selected rows as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[UsageDaily]) -> HttpResponse:
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="sluice-usage.csv"'
        usage_csv(
            queryset.select_related("user", "api_key").order_by("day", "user__username", "model"), response
        )
        return response
