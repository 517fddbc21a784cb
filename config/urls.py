"""URL map: OpenAI- and TGI-compatible routes at the root, native API under /api/v1/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gateway.apis.metrics import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("metrics", metrics, name="prometheus-django-metrics"),
    path("", include("gateway.urls")),
]

handler404 = "gateway.errors.not_found"
handler500 = "gateway.errors.server_error"
