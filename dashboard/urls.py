from __future__ import annotations

from django.urls import path

from dashboard.views import overview, snapshot, stream

app_name = "dashboard"
urlpatterns = [
    path("", overview, name="overview"),
    path("stream", stream, name="stream"),
    path("snapshot", snapshot, name="snapshot"),
]
