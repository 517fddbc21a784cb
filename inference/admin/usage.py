"""Usage per user, key and day (a chart, CSV export)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from unfold.admin import ModelAdmin

from inference.models import (
    UsageDaily,
)
from inference.observability.usage import usage_csv, usage_daily_chart

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
