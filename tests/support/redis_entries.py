"""Reading a job's stream in tests."""

from __future__ import annotations

from typing import Any

from inference.store import get_redis
from inference.streams import decode_fields, stream_key


def stream_entries(job_id: str) -> list[tuple[str, dict[str, str]]]:
    raw: Any = get_redis().xrange(stream_key(job_id))
    return [(entry_id.decode(), decode_fields(fields)) for entry_id, fields in raw]
