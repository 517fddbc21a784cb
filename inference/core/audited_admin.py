"""``AuditedAdmin``: a ModelAdmin mixin that writes one audit entry per create, change and
delete made through the admin (many-to-many fields included: the entry is written after
the related objects are saved)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest

from inference.core.audit import audit_changed, audit_created, audit_deleted, object_state

_BEFORE = "_sluice_audit_before"


class AuditedAdmin:
    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = None
        if change and obj.pk is not None:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = object_state(stored) if stored is not None else None
        setattr(obj, _BEFORE, before)
        super().save_model(request, obj, form, change)  # type: ignore[misc]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)  # type: ignore[misc]
        obj = form.instance
        before = getattr(obj, _BEFORE, None)
        if before is None:
            audit_created(obj, actor=request.user, request=request)
        else:
            audit_changed(obj, before, actor=request.user, request=request)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        # Written first, in the delete view's transaction: the row's id is gone afterwards.
        audit_deleted(obj, actor=request.user, request=request)
        super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            audit_deleted(obj, actor=request.user, request=request)
        super().delete_queryset(request, queryset)  # type: ignore[misc]
