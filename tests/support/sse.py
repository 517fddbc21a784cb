"""A minimal text/event-stream reader (what `curl -N` shows, parsed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    id: str | None
    event: str
    data: Any


def iter_events(response: httpx.Response) -> Iterator[Event]:
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                raw = "\n".join(data)
                yield Event(event_id, name, json.loads(raw) if raw.startswith(("{", "[")) else raw)
            event_id, name, data = None, "message", []
        elif line.startswith(":"):
            continue  # comment (keepalive)
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                event_id = value
            elif field == "event":
                name = value
            elif field == "data":
                data.append(value)


def read_events(
    url: str, headers: dict[str, str], *, limit: int | None = None, timeout: float = 60
) -> list[Event]:
    events: list[Event] = []
    with httpx.Client(timeout=timeout) as client, client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in iter_events(response):
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    return events
