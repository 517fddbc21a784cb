"""Logging filters."""

from __future__ import annotations

import logging

from gateway.middleware import current_request_id


class SkipReadinessProbes(logging.Filter):
    """A 503 from /readyz is the answer, not an error worth a log line (it is polled)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return getattr(request, "path", "") != "/readyz"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record: the id of the request being served (its
    ``X-Request-Id``), or ``-`` outside of one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True
