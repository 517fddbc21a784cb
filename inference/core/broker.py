"""The broker's side of a queue: where kombu's Redis transport keeps a Celery queue's messages
(for queue lengths on /metrics and the console, and for moving a gone worker's messages)."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def celery_queue_keys(queue: str) -> list[str]:
    """The Redis lists of a Celery queue: one per priority step (kombu's Redis transport)."""
    options: dict[str, Any] = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    prefix, sep = options.get("global_keyprefix", ""), options.get("sep", "\x06\x16")
    steps: list[int] = options.get("priority_steps", [0, 3, 6, 9])
    return [f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}" for step in steps]
