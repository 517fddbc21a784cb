"""Text that Postgres can store."""

from __future__ import annotations

# PostgreSQL text (and jsonb) cannot hold NUL. A byte-level tokenizer can generate one (any
# byte is a token), so model output is stored with it replaced by U+FFFD; clients still
# receive the exact text through the stream.
REPLACEMENT = "\ufffd"


def pg_safe(text: str) -> str:
    return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
