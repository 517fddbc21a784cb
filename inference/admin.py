"""Admin: jobs (read-only; cancel is the only action)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin

from inference.models import Job
from inference.services import job_cancel


@admin.register(Job)
class JobAdmin(ModelAdmin):
    list_display = (
        "id",
        "user",
        "model",
        "source",
        "status",
        "finish_reason",
        "completion_tokens",
        "queued_at",
        "duration",
    )
    list_filter = ("status", "model", "source", "finish_reason")
    search_fields = ("id", "user__username")
    date_hierarchy = "queued_at"
    list_select_related = ("user",)
    actions = ["cancel"]
    readonly_fields = [field.name for field in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

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
