"""Management commands of the gateway."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command

from gateway.models import ApiKey, hash_key
from gateway.selectors import apikey_get_active

pytestmark = pytest.mark.django_db


def test_createapikey_prints_a_working_key_and_stores_only_its_hash() -> None:
    out = io.StringIO()
    call_command("createapikey", "--user", "frank", stdout=out, stderr=io.StringIO())
    raw_key = out.getvalue().strip()
    assert raw_key.startswith("sk-sl-") and len(raw_key) > 40
    api_key = apikey_get_active(raw_key=raw_key)
    assert api_key is not None and api_key.user.username == "frank"
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert stored.key_hash == hash_key(raw_key)
    assert raw_key not in {stored.prefix, stored.key_hash, stored.name}
    assert stored.prefix == raw_key[:12]


def test_ensure_demo_access_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    first = io.StringIO()
    call_command("ensure_demo_access", "--file", str(path), stdout=first)
    again = io.StringIO()
    call_command("ensure_demo_access", "--file", str(path), stdout=again)
    one, two = json.loads(first.getvalue()), json.loads(again.getvalue())
    assert one == two  # the same login and key on every start
    assert apikey_get_active(raw_key=one["api_key"]) is not None
    assert path.stat().st_mode & 0o777 == 0o600
