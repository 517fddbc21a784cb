"""Model versions (activate, canary, promote, roll back, drain, retire; health, breaker, the
workers that hold each; events) and the settings-served version shown above their list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from unfold.admin import ModelAdmin, TabularInline

from inference.core.audited_admin import AuditedAdmin
from inference.models import (
    ModelVersion,
    ModelVersionEvent,
)
from inference.versions.fleet import version_replicas, worker_heartbeats
from inference.versions.health import open_breakers, version_stats
from inference.versions.lifecycle import (
    version_activate,
    version_drain,
    version_promote,
    version_retire,
    version_rollback,
)
from inference.versions.registry import all_versions, registry_invalidate, settings_version


def _heartbeats() -> list[dict[str, Any]]:
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
