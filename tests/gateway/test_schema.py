"""The OpenAPI schema (drf-spectacular) documents every route."""

from __future__ import annotations

import pytest
import yaml
from django.test import Client

pytestmark = pytest.mark.django_db


def test_schema_lists_the_apis(client: Client) -> None:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    paths = set(schema["paths"])
    for expected in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/generate",
        "/generate_stream",
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/events",
        "/api/v1/jobs/{job_id}/cancel",
    ):
        assert expected in paths, expected
    assert "ChatCompletionRequest" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
