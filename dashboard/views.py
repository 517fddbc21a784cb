"""Ops overview for staff: workers, queue, recent jobs."""

from __future__ import annotations

import json
import time

from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from inference.models import Job
from inference.selectors import worker_heartbeats
from inference.store import get_redis


@staff_member_required
def overview(request: HttpRequest) -> HttpResponse:
    counts = dict(Job.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    workers = sorted(worker_heartbeats(), key=lambda beat: beat.get("name", ""))
    now = time.time()
    for beat in workers:
        beat["age"] = round(now - float(beat.get("ts", now)), 1)
    recent = Job.objects.select_related("user", "model_version").order_by("-queued_at")[:25]
    raw = get_redis().get("sluice:supervisor")
    supervisor = json.loads(raw).get("processes", {}) if raw else {}
    return render(
        request,
        "dashboard/overview.html",
        {
            "title": "Operations",
            "counts": counts,
            "workers": workers,
            "recent": recent,
            "supervisor": supervisor,
        },
    )
