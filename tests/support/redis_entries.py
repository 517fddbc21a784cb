"""Reading a job's stream in tests: the raw wire fields, as Redis holds them."""

from __future__ import annotations

from typing import Any

from inference.core.redis import get_redis
from inference.streams import stream_key


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_entries(job_id: str) -> list[tuple[str, dict[str, str]]]:
    raw: Any = get_redis().xrange(stream_key(job_id))
    return [(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}) for entry_id, fields in raw]
