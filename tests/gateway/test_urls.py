"""The URL contract: every path the API owns answers errors as JSON in its protocol's
envelope (TGI's on TGI routes, OpenAI's everywhere else): wrong methods 405, unknown
subpaths and unknown paths under the API's prefixes 404, never an HTML page."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from django.test import Client
from django.urls import URLPattern, resolve

from gateway import urls as gateway_urls
from gateway.errors import is_tgi_path
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.e2e

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SAMPLES = {"str": "x", "path": "x", "int": "1", "uuid": "00000000-0000-0000-0000-000000000000"}


def routes() -> list[tuple[str, set[str]]]:
    """(a concrete path, the methods its view implements) for every routed API view."""
    found = []
    for pattern in gateway_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view: Any = getattr(pattern.callback, "cls", None)
        if view is None:  # the catch-alls
            continue
        route = str(pattern.pattern)
        path = "/" + re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLES[str(m.group(1) or "str")], route)
        methods = {
            m.upper() for m in view.http_method_names if hasattr(view, m) and m not in ("options", "head")
        }
        found.append((path, methods))
    return found


def assert_envelope(path: str, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (path, response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("application/json"), (path, response.headers)
    body = response.json()
    if is_tgi_path(path):
        assert isinstance(body["error"], str) and body["error"], (path, body)
        assert body["error_type"] == "validation", (path, body)
    else:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, (path, body)
        assert error["type"] == "invalid_request_error", (path, body)


def test_every_route_is_in_the_contract() -> None:
    paths = {path for path, _ in routes()}
    assert "/v1/responses/x/input_items" in paths and "/generate_stream" in paths and "/" in paths
    assert len(paths) >= 25


def test_wrong_methods_and_unknown_subpaths_answer_json(live: Live, api_user: ApiUser) -> None:
    with httpx.Client(base_url=live.base_url, headers=api_user.headers, timeout=30) as http:
        for path, methods in routes():
            for method in sorted(set(METHODS) - methods):
                assert_envelope(path, http.request(method, path), 405)
            if path == "/":
                continue  # below the root is the whole site, not the API
            unknown = path.rstrip("/") + "/no-such-thing"
            if getattr(resolve(unknown).func, "cls", None) is not None:
                continue  # a route of its own (a model id may contain "/"): covered by its entry
            for method in ("GET", "POST"):
                assert_envelope(unknown, http.request(method, unknown), 404)
        for path in (
            "/v1",
            "/v1/nothing",
            "/v1/chat",
            "/api/v2/jobs",
            "/api/v1/nothing/here",
            "/ws/v1/x",
            "/info/x",
        ):
            for method in ("GET", "POST", "DELETE"):
                assert_envelope(path, http.request(method, path), 404)


@pytest.mark.parametrize("debug", [True, False])
def test_unknown_urls_are_json_whatever_debug_says(settings: Any, api_user: ApiUser, debug: bool) -> None:
    """`make run` may run with DEBUG on, where Django answers its HTML 404 page listing the URL
    patterns; the peers' clients call root paths (``POST /fake/model``, ``GET /version``)."""
    settings.DEBUG = debug
    client = Client()
    for method, path in (
        ("get", "/v1/nothing"),
        ("get", "/api/v1/nothing"),
        ("post", "/generate/x"),
        ("post", "/fake/model"),
        ("get", "/version"),
        ("delete", "/not/the/api"),
    ):
        response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {api_user.key}")
        assert response.status_code == 404 and response["content-type"].startswith("application/json"), path
        assert response.json()["error"], path
    # The admin's and the console's pages stay pages (and redirect a missing slash).
    assert client.get("/admin").status_code == 301
    assert client.get("/dashboard/nothing")["content-type"].startswith("text/html")


def test_peer_clients_get_their_not_found_error(live: Live, api_user: ApiUser) -> None:
    """What failed 4 of the peers' protocol tests: their clients could not parse an HTML 404."""
    import huggingface_hub
    import text_generation

    with pytest.raises(text_generation.errors.NotFoundError):
        text_generation.Client(f"{live.base_url}/fake/model", headers=api_user.headers).generate("x")
    client = huggingface_hub.InferenceClient(base_url=f"{live.base_url}/fake/model", api_key=api_user.key)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as missing:
        client.text_generation("x")
    assert missing.value.response.status_code == 404


def test_api_docs_work_offline(live: Live) -> None:
    page = httpx.get(f"{live.base_url}/api/docs/", timeout=30)
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert assets and all(asset.startswith("/static/") for asset in assets), assets  # no CDN
    for asset in assets:
        assert httpx.get(f"{live.base_url}{asset}", timeout=30).status_code == 200, asset
