"""Self-service API keys on the live server: create (shown once), list (prefixes only), revoke
(401 on the next request), another user's key is a 404, a key's policy may not be higher than
the caller's own, and every change is in the audit log as made through the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from gateway.models import ApiKey, RateLimitPolicy, UserRateLimit
from inference.core.models import AuditEntry
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.e2e


def keys_url(live: Live) -> str:
    return f"{live.base_url}/api/v1/me/keys"


def test_create_list_use_and_revoke(live: Live, make_api_user: Callable[..., ApiUser]) -> None:
    alice = make_api_user()
    created = httpx.post(keys_url(live), json={"name": "ci-runner"}, headers=alice.headers, timeout=30)
    assert created.status_code == 201, created.text
    body = created.json()
    raw = body["key"]
    assert raw.startswith(body["prefix"]) and body["name"] == "ci-runner" and body["active"] is True
    new_headers = {"Authorization": f"Bearer {raw}"}
    assert httpx.get(f"{live.base_url}/v1/models", headers=new_headers, timeout=30).status_code == 200

    listed = httpx.get(keys_url(live), headers=alice.headers, timeout=30)
    assert listed.status_code == 200
    names = {k["name"]: k for k in listed.json()["data"]}
    assert set(names) == {"test", "ci-runner"}
    assert raw not in listed.text  # the key itself is shown once, at creation
    assert names["ci-runner"]["last_used_at"] is not None

    revoked = httpx.delete(f"{keys_url(live)}/{body['id']}", headers=alice.headers, timeout=30)
    assert revoked.status_code == 200 and revoked.json()["deleted"] is True
    assert revoked.json()["revoked_at"] is not None
    # At once: keys are looked up on every request.
    refused = httpx.get(f"{live.base_url}/v1/models", headers=new_headers, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "invalid_request_error"
    assert [k["name"] for k in httpx.get(keys_url(live), headers=alice.headers).json()["data"]] == ["test"]
    with_revoked = httpx.get(f"{keys_url(live)}?include_revoked=true", headers=alice.headers).json()["data"]
    assert {k["name"]: k["active"] for k in with_revoked} == {"test": True, "ci-runner": False}

    entries = AuditEntry.objects.filter(object_type="gateway.apikey", object_id=str(body["id"])).order_by(
        "id"
    )
    assert [(e.action, e.via, e.actor_id) for e in entries] == [
        ("created", "api", alice.user.pk),
        ("revoked", "api", alice.user.pk),
    ]
    assert "key_hash" not in entries[0].changes or entries[0].changes["key_hash"] == "(secret)"
    assert raw not in str(entries[0].changes)


def test_another_users_key_and_bad_input(live: Live, make_api_user: Callable[..., ApiUser]) -> None:
    alice, bob = make_api_user(), make_api_user()
    bobs_key = ApiKey.objects.get(user=bob.user)
    for key_id in (str(bobs_key.pk), "999999999", "not-a-number"):
        missing = httpx.delete(f"{keys_url(live)}/{key_id}", headers=alice.headers, timeout=30)
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "not_found"
    assert ApiKey.objects.get(pk=bobs_key.pk).revoked_at is None
    assert httpx.get(f"{live.base_url}/v1/models", headers=bob.headers).status_code == 200

    past = (timezone.now() - timedelta(days=1)).isoformat()
    expired = httpx.post(keys_url(live), json={"name": "old", "expires_at": past}, headers=alice.headers)
    assert expired.status_code == 400 and expired.json()["error"]["param"] == "expires_at"
    assert httpx.post(keys_url(live), json={}, headers=alice.headers).status_code == 400
    assert (
        httpx.post(keys_url(live), json={"name": "x", "policy": "no-such"}, headers=alice.headers).status_code
        == 400
    )
    assert ApiKey.objects.filter(user=alice.user).count() == 1  # nothing was created
    # Without a key: 401, not a listing.
    assert httpx.get(keys_url(live)).status_code == 401


def test_a_keys_policy_is_never_above_the_callers(live: Live, make_api_user: Callable[..., ApiUser]) -> None:
    alice = make_api_user()
    own = RateLimitPolicy.objects.create(name="keys-own", requests_per_minute=60, priority=1)
    UserRateLimit.objects.create(user=alice.user, policy=own)
    RateLimitPolicy.objects.create(name="keys-higher", requests_per_minute=600, priority=1)
    RateLimitPolicy.objects.create(name="keys-unlimited", requests_per_minute=0, priority=1)
    RateLimitPolicy.objects.create(name="keys-priority", requests_per_minute=10, priority=5)
    RateLimitPolicy.objects.create(name="keys-lower", requests_per_minute=10, priority=0)
    for name in ("keys-higher", "keys-unlimited", "keys-priority"):
        refused = httpx.post(keys_url(live), json={"name": name, "policy": name}, headers=alice.headers)
        assert refused.status_code == 403, (name, refused.text)
        assert refused.json()["error"]["code"] == "policy_not_allowed"
    allowed = httpx.post(
        keys_url(live), json={"name": "batch", "policy": "keys-lower"}, headers=alice.headers
    )
    assert allowed.status_code == 201 and allowed.json()["policy"] == "keys-lower"
    assert (
        ApiKey.objects.get(pk=allowed.json()["id"]).policy_id
        == RateLimitPolicy.objects.get(name="keys-lower").pk
    )
