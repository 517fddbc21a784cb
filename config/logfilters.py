"""Logging filters."""

from __future__ import annotations

import logging


class SkipReadinessProbes(logging.Filter):
    """A 503 from /readyz is the answer, not an error worth a log line (it is polled)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return getattr(request, "path", "") != "/readyz"
