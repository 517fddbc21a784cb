"""The native job as JSON, and its resumable event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.sse import KEEPALIVE, sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job


def job_representation(job: Job) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(job.id),
        "object": "job",
        "model": job.model,
        "kind": job.kind,
        "status": job.status,
        "input": job.input,
        "params": job.params,
        "output": {"text": job.output_text, "finish_reason": job.finish_reason or None},
        "usage": job.usage,
        "error": job.error or None,
        "attempts": job.attempts,
        "session_id": str(job.session_id) if job.session_id else None,
        "citations": job.citations,
        "cache_hit": job.cache_hit,
        "request_id": job.request_id or None,
        "created_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "first_token_at": iso(job.first_token_at),
        "finished_at": iso(job.finished_at),
        "timings": job_client.timings(job),
        "links": {
            "self": f"/api/v1/jobs/{job.id}",
            "events": f"/api/v1/jobs/{job.id}/events",
            "cancel": f"/api/v1/jobs/{job.id}/cancel",
        },
    }


def event_of(entry: StreamEntry) -> dict[str, Any] | None:
    """A stream entry as a native event (``type`` + fields); None for entries not shown."""
    if entry.kind == EntryKind.TOKEN:
        return {
            "type": "token",
            "text": entry.text,
            "token_ids": entry.token_ids,
            "completion_tokens": entry.completion_tokens,
        }
    if entry.kind == EntryKind.END:
        data: dict[str, Any] = {
            "type": "end",
            "status": entry.status,
            "finish_reason": entry.finish_reason or None,
            "usage": entry.usage,
            "error": entry.error or None,
            "cache_hit": entry.cache_hit,
        }
        if entry.full_text is not None:
            data["text"] = entry.full_text
        return data
    if entry.kind == EntryKind.CITATIONS:
        return {"type": "citations", "citations": entry.citations}
    if entry.kind == EntryKind.START:
        return {"type": "started", "attempt": entry.attempt}
    if entry.kind == EntryKind.QUEUED:
        return {"type": "queued"}
    return None


def job_events(*, job_id: str, after: str, keepalive_s: float) -> AsyncIterator[bytes]:
    """``/api/v1/jobs/{id}/events``: every entry, with its stream id as the SSE id, so that
    ``Last-Event-ID`` resumes exactly after the last event seen. Disconnecting does not
    cancel the job (that is what the cancel endpoint is for)."""

    async def events() -> AsyncIterator[bytes]:
        async for entry in job_client.follow(job_id, after=after, keepalive_s=keepalive_s):
            if entry is None:
                yield KEEPALIVE
                continue
            event = event_of(entry)
            if event is None:
                continue
            name = event.pop("type")
            event_id = entry.id if entry.id != "0-0" else None
            yield sse(event, event=name, id=event_id)

    return events()
