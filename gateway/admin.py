"""Admin: users (with their rate-limit policy), API keys (prefix only; a new key is shown once),
rate-limit policies (edits apply within SLUICE_POLICY_CACHE_S, no restart)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin, StackedInline
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from gateway.models import ApiKey, RateLimitPolicy, UserRateLimit
from gateway.services import apikey_create, apikey_revoke
from inference.core.audit import audit_record
from inference.core.audited_admin import AuditedAdmin
from inference.core.models import AuditAction

admin.site.unregister(User)
admin.site.unregister(Group)


class UserRateLimitInline(StackedInline):
    model = UserRateLimit
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name = "rate-limit policy (none: the default policy)"


@admin.register(User)
class UserAdmin(BaseUserAdmin, ModelAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm
    inlines = [UserRateLimitInline]


@admin.register(RateLimitPolicy)
class RateLimitPolicyAdmin(AuditedAdmin, ModelAdmin):
    list_display = (
        "name",
        "is_default",
        "priority",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent",
        "daily_token_budget",
        "max_queue_wait_s",
        "burst",
        "updated_at",
    )
    list_editable = ("requests_per_minute", "tokens_per_minute", "max_concurrent", "max_queue_wait_s")
    search_fields = ("name", "description")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_default", "priority")}),
        (
            "Limits (0: unlimited)",
            {
                "fields": (
                    "requests_per_minute",
                    "tokens_per_minute",
                    "burst",
                    "max_concurrent",
                    "daily_token_budget",
                    "max_queue_wait_s",
                )
            },
        ),
    )


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    pass


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin, ModelAdmin):
    list_display = (
        "prefix_display",
        "name",
        "user",
        "policy",
        "created_at",
        "last_used_at",
        "expires_at",
        "active",
    )
    list_filter = ("revoked_at", "policy")
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = ("prefix_display", "created_at", "last_used_at", "revoked_at")
    fields = (
        "user",
        "name",
        "policy",
        "expires_at",
        "prefix_display",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    actions = ["revoke"]
    autocomplete_fields = ("user",)

    @admin.display(description="key")
    def prefix_display(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…" if obj.prefix else "(shown once, after saving)"

    @admin.display(boolean=True)
    def active(self, obj: ApiKey) -> bool:
        return obj.is_active

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = apikey_create(user=obj.user, name=obj.name, expires_at=obj.expires_at, policy=obj.policy)
        obj.pk = issued.api_key.pk
        obj.prefix, obj.key_hash, obj.created_at = (
            issued.api_key.prefix,
            issued.api_key.key_hash,
            issued.api_key.created_at,
        )
        messages.warning(request, f"New API key (copy it now, it will not be shown again): {issued.raw_key}")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            if api_key.revoked_at is None:
                apikey_revoke(api_key=api_key)
                audit_record(action=AuditAction.REVOKED, obj=api_key, actor=request.user, request=request)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
