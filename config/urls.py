"""URL map: OpenAI- and TGI-compatible routes at the root, native API under /api/v1/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gateway.apis.metrics import metrics
from gateway.errors import unknown_url

urlpatterns = [
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("metrics", metrics, name="prometheus-django-metrics"),
    path("", include("gateway.urls")),
    # Every other URL: a JSON 404 (an API client parses it), whatever DEBUG says; the admin's,
    # the console's and static files' prefixes keep Django's pages and slash redirects.
    re_path(r"^(?!admin(?:/|$)|dashboard(?:/|$)|static/|api/docs/).+$", csrf_exempt(unknown_url)),
]

handler404 = "gateway.errors.not_found"
handler500 = "gateway.errors.server_error"
