"""Chat sessions with their messages, user profiles, knowledge bases with their documents' ingestion
status, and the result cache (clear)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin, TabularInline

from inference.cache import result_cache_clear
from inference.core.audited_admin import AuditedAdmin
from inference.models import (
    CachedResult,
    ChatSession,
    Document,
    KnowledgeBase,
    Message,
    UserProfile,
)
from inference.rag.services import document_upload


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
