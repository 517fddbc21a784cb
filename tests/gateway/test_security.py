"""A revoked key closes the sockets it opened; admin logins are throttled."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from gateway.models import ApiKey
from gateway.services import apikey_revoke
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.e2e


def test_revoking_a_key_closes_its_open_sockets(live: Live, api_user: ApiUser) -> None:
    with (
        connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers) as idle,
        connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=api_user.headers) as busy,
    ):
        assert json.loads(idle.recv(timeout=30))["type"] == "ready"
        assert json.loads(busy.recv(timeout=30))["type"] == "ready"
        apikey_revoke(api_key=ApiKey.objects.get(user=api_user.user))
        # The next request on a socket is refused and closes it ...
        busy.send(json.dumps({"type": "request", "prompt": "x", "max_tokens": 2}))
        assert json.loads(busy.recv(timeout=30))["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            busy.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        # ... and a socket that sends nothing learns of it within SLUICE_WS_KEY_CHECK_S (1 s here).
        started = time.monotonic()
        assert json.loads(idle.recv(timeout=30))["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed):
            idle.recv(timeout=30)
        assert time.monotonic() - started < 10


def test_admin_login_is_locked_out_after_repeated_failures(live: Live, transactional_db: Any) -> None:
    from django.contrib.auth.models import User

    User.objects.create_superuser("ops", password="the-right-password-42")
    with httpx.Client(base_url=live.base_url, timeout=30) as browser:

        def login(password: str) -> httpx.Response:
            browser.get("/admin/login/")
            return browser.post(
                "/admin/login/?next=/admin/",
                data={
                    "username": "ops",
                    "password": password,
                    "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                },
                headers={"Referer": f"{live.base_url}/admin/login/"},
            )

        for _ in range(4):
            assert login("wrong").status_code == 200  # the form again, with an error
        assert login("wrong").status_code == 429  # the 5th failure (SLUICE_LOGIN_FAILURE_LIMIT) locks
        locked = login("the-right-password-42")
        assert locked.status_code == 429  # django-axes: locked out, the right password too
        assert "/admin/" not in locked.headers.get("location", "")
    from axes.models import AccessAttempt

    assert AccessAttempt.objects.filter(username="ops", failures_since_start__gte=5).exists()
