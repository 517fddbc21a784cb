"""The audit log: an admin edit of a policy is one entry with its actor and a field diff; a
model version's lifecycle event is linked in with its actor; an API key's secret never enters
it; failed authentications are counted per key prefix and address, never with the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client

from gateway.models import RateLimitPolicy
from gateway.services import apikey_create
from inference.core.audit import auth_failures_sync
from inference.core.models import AuditEntry, AuthFailure
from inference.models import ModelVersion, ModelVersionEvent
from inference.versions.lifecycle import version_rollback
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.django_db(transaction=True)

POLICY_FORM = {
    "name": "team-a",
    "description": "",
    "priority": "0",
    "requests_per_minute": "60",
    "tokens_per_minute": "0",
    "burst": "1.0",
    "max_concurrent": "0",
    "daily_token_budget": "0",
    "max_queue_wait_s": "10",
}


@pytest.fixture
def operator(client: Client) -> tuple[Client, User]:
    user = User.objects.create_superuser("ops", "ops@example.com", "pw-12345-long")
    client.force_login(user)
    return client, user


def test_an_admin_policy_edit_is_one_entry_with_actor_and_diff(operator: tuple[Client, User]) -> None:
    client, user = operator
    added = client.post("/admin/gateway/ratelimitpolicy/add/", POLICY_FORM)
    assert added.status_code == 302, added.content[:2000]
    policy = RateLimitPolicy.objects.get(name="team-a")
    changed = client.post(
        f"/admin/gateway/ratelimitpolicy/{policy.pk}/change/",
        {**POLICY_FORM, "requests_per_minute": "120", "max_queue_wait_s": "5"},
    )
    assert changed.status_code == 302, changed.content[:2000]
    entries = list(AuditEntry.objects.filter(object_type="gateway.ratelimitpolicy", object_id=str(policy.pk)))
    assert [e.action for e in sorted(entries, key=lambda e: e.pk)] == ["created", "changed"]
    change = max(entries, key=lambda e: e.pk)
    assert change.actor_id == user.pk and change.actor_name == "ops" and change.via == "admin"
    assert change.changes == {"requests_per_minute": [60, 120], "max_queue_wait_s": [10.0, 5.0]}
    assert change.source_ip == "127.0.0.1"
    # Saving with nothing changed writes nothing.
    client.post(
        f"/admin/gateway/ratelimitpolicy/{policy.pk}/change/",
        {**POLICY_FORM, "requests_per_minute": "120", "max_queue_wait_s": "5"},
    )
    assert AuditEntry.objects.filter(object_type="gateway.ratelimitpolicy").count() == 2
    deleted = client.post(f"/admin/gateway/ratelimitpolicy/{policy.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    last = AuditEntry.objects.filter(object_type="gateway.ratelimitpolicy").first()
    assert last is not None and last.action == "deleted" and last.changes["name"] == "team-a"
    # The log is on the admin, read-only.
    page = client.get("/admin/dashboard/auditentry/")
    assert page.status_code == 200 and b"team-a" in page.content
    assert client.get(f"/admin/dashboard/auditentry/{last.pk}/delete/").status_code == 403


def test_version_events_are_linked_in_with_their_actor(
    operator: tuple[Client, User], demo_model_dir: Path
) -> None:
    _, user = operator
    version = ModelVersion.objects.create(
        served_name="audited", label="v1", path=str(demo_model_dir), status="canary", traffic_weight=10
    )
    version_rollback(version=version, actor=user.username, reason="p99 too high")
    event = ModelVersionEvent.objects.get(version=version, kind="rolled_back")
    entry = AuditEntry.objects.get(version_event=event)
    assert entry.action == "event" and entry.actor_id == user.pk and entry.via == "admin"
    assert entry.object_type == "inference.modelversion" and entry.object_id == str(version.pk)
    assert entry.changes["event"] == "rolled_back" and entry.changes["reason"] == "p99 too high"


def test_an_api_key_edit_never_logs_the_secret(operator: tuple[Client, User]) -> None:
    client, _ = operator
    owner = User.objects.create(username="key-owner")
    issued = apikey_create(user=owner, name="laptop")
    key = issued.api_key
    response = client.post(
        f"/admin/gateway/apikey/{key.pk}/change/",
        {"user": str(owner.pk), "name": "desktop", "policy": "", "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 302, response.content[:3000]
    entry = AuditEntry.objects.get(object_type="gateway.apikey", object_id=str(key.pk), action="changed")
    assert entry.changes == {"name": ["laptop", "desktop"]}
    text = str(list(AuditEntry.objects.values_list("changes", flat=True)))
    assert issued.raw_key not in text and key.key_hash not in text


def test_auth_failures_are_counted_by_prefix_and_address(
    live: Live, make_api_user: Callable[..., ApiUser]
) -> None:
    wrong = "sk-sl-WRONGprefix-and-the-rest-of-a-made-up-secret"
    for _ in range(3):
        response = httpx.get(f"{live.base_url}/v1/models", headers={"Authorization": f"Bearer {wrong}"})
        assert response.status_code == 401
    auth_failures_sync()  # what the admin page does when it is opened: the exact Redis counts
    rows = AuthFailure.objects.filter(key_prefix=wrong[:12])
    assert [(r.count, r.source_ip, r.via) for r in rows] == [(3, "127.0.0.1", "api")]
    stored = str(list(AuthFailure.objects.values_list("key_prefix", flat=True)))
    assert wrong not in stored and wrong[:20] not in stored
