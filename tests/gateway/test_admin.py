"""Admin (unfold) and the ops dashboard, as a browser session sees them."""

from __future__ import annotations

import html
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from gateway.models import ApiKey
from gateway.services import apikey_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    admin = User.objects.create_superuser("root", "root@example.com", "pw-12345-long")
    client.force_login(admin)
    return client


def test_login_page_renders_unfold(client: Client) -> None:
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert b"unfold" in response.content.lower()


def test_a_login_from_any_entry_point_lands_in_the_admin(client: Client) -> None:
    """Straight to /admin/login/ (no ?next=): Django's default is /accounts/profile/, a 404."""
    User.objects.create_superuser("ops", "ops@example.com", "pw-12345-long")
    response = client.post("/admin/login/", {"username": "ops", "password": "pw-12345-long"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_the_site_root_is_a_landing_page_for_people(client: Client) -> None:
    """The admin's "View site" lands on / : a page saying what this is and where to go (POST /
    stays TGI's compatibility route)."""
    page = client.get("/")
    assert page.status_code == 200 and page["content-type"].startswith("text/html")
    for link in ("/api/docs/", "/dashboard/", "/admin/", "/readyz"):
        assert f'href="{link}"'.encode() in page.content
    assert client.post("/", {}, content_type="application/json").status_code == 401  # the API's, unchanged


def test_api_keys_show_prefix_only(staff: Client) -> None:
    user = User.objects.create(username="carol")
    issued = apikey_create(user=user, name="laptop")
    page = staff.get("/admin/gateway/apikey/")
    assert page.status_code == 200
    assert issued.api_key.prefix.encode() in page.content
    assert issued.raw_key.encode() not in page.content
    assert issued.api_key.key_hash.encode() not in page.content
    detail = staff.get(f"/admin/gateway/apikey/{issued.api_key.pk}/change/")
    assert detail.status_code == 200
    assert issued.raw_key.encode() not in detail.content
    assert issued.api_key.key_hash.encode() not in detail.content


def test_creating_a_key_in_admin_shows_it_once(staff: Client) -> None:
    user = User.objects.create(username="dave")
    response = staff.post("/admin/gateway/apikey/add/", {"user": user.pk, "name": "ci"}, follow=True)
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    (shown,) = [m.split(": ", 1)[1] for m in messages if "New API key" in m]
    key = ApiKey.objects.get(user=user)
    assert shown.startswith(key.prefix)
    assert key.key_hash != shown and shown not in key.key_hash
    assert staff.get("/admin/gateway/apikey/").content.count(shown.encode()) == 0


def test_revoke_action(staff: Client) -> None:
    issued = apikey_create(user=User.objects.create(username="erin"))
    staff.post("/admin/gateway/apikey/", {"action": "revoke", "_selected_action": [issued.api_key.pk]})
    issued.api_key.refresh_from_db()
    assert not issued.api_key.is_active


def test_users_jobs_and_dashboard_pages(staff: Client) -> None:
    for url in ("/admin/auth/user/", "/admin/inference/job/", "/admin/", "/dashboard/"):
        response = staff.get(url)
        assert response.status_code == 200, url
    assert b"Workers" in staff.get("/dashboard/").content


def test_dashboard_requires_staff(client: Client) -> None:
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_operator_pages_render(staff: Client, demo_model_dir: object) -> None:
    from gateway.models import RateLimitPolicy
    from inference.chat.services import profile_update, session_create
    from inference.models import ModelVersion
    from inference.rag.services import knowledge_base_create

    owner = User.objects.create(username="frank")
    RateLimitPolicy.objects.create(name="gold", requests_per_minute=1000, priority=5)
    session_create(user=owner, title="a chat")
    profile_update(user=owner, language="Dutch")
    knowledge_base_create(owner=owner, name="handbook")
    version = ModelVersion.objects.create(served_name="svc", label="v1", path=str(demo_model_dir))
    for url in (
        "/admin/gateway/ratelimitpolicy/",
        "/admin/inference/chatsession/",
        "/admin/inference/userprofile/",
        "/admin/inference/knowledgebase/",
        "/admin/inference/document/",
        "/admin/inference/cachedresult/",
        "/admin/inference/modelversion/",
        f"/admin/inference/modelversion/{version.pk}/change/",
        "/admin/inference/modelversionevent/",
        f"/admin/auth/user/{owner.pk}/change/",
    ):
        response = staff.get(url)
        assert response.status_code == 200, url
    assert b"gold" in staff.get("/admin/gateway/ratelimitpolicy/").content


def test_policy_edit_and_version_actions_from_the_admin(staff: Client, demo_model_dir: object) -> None:
    from gateway.models import RateLimitPolicy
    from inference.models import ModelVersion, ModelVersionEvent

    policy = RateLimitPolicy.objects.create(name="silver", requests_per_minute=100)
    response = staff.post(
        f"/admin/gateway/ratelimitpolicy/{policy.pk}/change/",
        {
            "name": "silver",
            "description": "",
            "priority": 2,
            "requests_per_minute": 250,
            "tokens_per_minute": 1000,
            "burst": 1.0,
            "max_concurrent": 4,
            "daily_token_budget": 0,
            "max_queue_wait_s": 5,
        },
    )
    assert response.status_code == 302, response.content[:2000]
    policy.refresh_from_db()
    assert (policy.requests_per_minute, policy.priority) == (250, 2)
    stable = ModelVersion.objects.create(
        served_name="svc", label="v1", path=str(demo_model_dir), status="stable"
    )
    canary = ModelVersion.objects.create(
        served_name="svc", label="v2", path=str(demo_model_dir), status="canary", traffic_weight=10
    )
    staff.post("/admin/inference/modelversion/", {"action": "promote", "_selected_action": [canary.pk]})
    stable.refresh_from_db()
    canary.refresh_from_db()
    assert (stable.status, canary.status) == ("retired", "stable")
    assert ModelVersionEvent.objects.filter(version=canary, kind="promoted", actor="root").exists()
    staff.post("/admin/inference/modelversion/", {"action": "drain", "_selected_action": [canary.pk]})
    canary.refresh_from_db()
    assert canary.traffic_weight == 0


def test_result_cache_can_be_cleared_from_the_admin(staff: Client) -> None:
    from inference.cache import result_cache_put
    from inference.models import CachedResult

    owner = User.objects.create(username="gina")
    for key in ("k1", "k2"):
        result_cache_put(
            user_id=owner.pk, key=key, model="m", output_text="x", finish_reason="eos", prompt_tokens=1,
            completion_tokens=1, knowledge_base_ids=[], citations=[],
        )  # fmt: skip
    assert staff.get("/admin/inference/cachedresult/").status_code == 200
    first = CachedResult.objects.first()
    assert first is not None
    staff.post("/admin/inference/cachedresult/", {"action": "clear_all", "_selected_action": [first.pk]})
    assert not CachedResult.objects.exists()


def test_the_settings_served_model_is_on_the_version_list(staff: Client, demo_model_dir: object) -> None:
    """A fresh `make run` serves SLUICE_MODEL_NAME from SLUICE_MODEL_PATH with no row: the
    list shows it (read-only) with a link that adds it as a managed version; a stable version
    of the same name supersedes it."""
    from django.conf import settings

    from inference.models import ModelVersion
    from inference.versions.registry import registry_invalidate

    registry_invalidate()
    page = staff.get("/admin/inference/modelversion/").content.decode()
    assert 'id="settings-version"' in page
    assert f"{settings.SLUICE_MODEL_NAME}@default" in page and str(settings.SLUICE_MODEL_PATH) in page
    assert ">serving<" in page
    adopt = re.search(r'href="(/admin/inference/modelversion/add/\?[^"]+)"', page)
    assert adopt, page
    form = staff.get(html.unescape(adopt.group(1)))
    assert form.status_code == 200
    initial = form.context["adminform"].form.initial
    assert (initial["served_name"], initial["path"], initial["status"]) == (
        settings.SLUICE_MODEL_NAME, str(settings.SLUICE_MODEL_PATH), "draft",
    )  # fmt: skip

    ModelVersion.objects.create(
        served_name=settings.SLUICE_MODEL_NAME, label="v1", path=str(demo_model_dir), status="stable"
    )
    registry_invalidate()
    assert "superseded" in staff.get("/admin/inference/modelversion/").content.decode()


def test_a_versions_health_is_a_table(staff: Client, demo_model_dir: object) -> None:
    from inference.models import ModelVersion

    version = ModelVersion.objects.create(served_name="svc", label="v1", path=str(demo_model_dir))
    page = staff.get(f"/admin/inference/modelversion/{version.pk}/change/").content.decode()
    health = page[page.index('id="health"') :][:1000]
    assert "time to first token, p99" in health and "ttft_p99_ms" not in page and "None" not in health
