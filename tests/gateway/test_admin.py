"""Admin (unfold) and the ops dashboard, as a browser session sees them."""

from __future__ import annotations

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
