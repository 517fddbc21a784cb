"""Admin: the audit log and the authentication failures (read-only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from unfold.admin import ModelAdmin

from inference.core.audit import auth_failures_sync
from inference.core.models import AuditEntry, AuthFailure


class ReadOnlyAdmin(ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "at",
        "actor_name",
        "action",
        "object_type",
        "object_repr",
        "via",
        "source_ip",
        "event_link",
    )
    list_filter = ("action", "object_type", "via")
    search_fields = ("actor_name", "object_repr", "object_id")
    date_hierarchy = "at"
    readonly_fields = (
        "at", "actor", "actor_name", "action", "object_type", "object_id", "object_repr", "changes", "via",
        "source_ip", "event_link",
    )  # fmt: skip
    fields = readonly_fields

    @admin.display(description="version event")
    def event_link(self, obj: AuditEntry) -> str:
        if obj.version_event_id is None:
            return "-"
        url = reverse("admin:inference_modelversionevent_change", args=[obj.version_event_id])
        return format_html('<a href="{}">event #{}</a>', url, obj.version_event_id)


@admin.register(AuthFailure)
class AuthFailureAdmin(ReadOnlyAdmin):
    list_display = ("hour", "key_prefix", "source_ip", "via", "count", "last_at")
    list_filter = ("via",)
    search_fields = ("key_prefix", "source_ip")
    date_hierarchy = "hour"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The counts live in Redis and reach Postgres sampled: bring them up to date first.
        auth_failures_sync()
        return super().changelist_view(request, extra_context)
