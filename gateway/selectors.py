"""Gateway reads: API keys."""

from __future__ import annotations

from gateway.models import ApiKey
from gateway.services import hash_key


def apikey_get_active(*, raw_key: str) -> ApiKey | None:
    """The active key matching a presented secret (with its user), or None."""
    if not raw_key or len(raw_key) > 200:
        return None
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(key_hash=hash_key(raw_key), revoked_at__isnull=True)
        .first()
    )
    if api_key is None or not api_key.is_active or not api_key.user.is_active:
        return None
    return api_key
