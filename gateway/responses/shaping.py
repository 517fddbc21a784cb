"""Response objects and their streamed events, shaped from a job's row and stream entries.

The events of a response are a pure function of its job's stream, so that a client that
lost its connection can ask for them again from any ``sequence_number`` and get exactly the
events it missed (``GET /v1/responses/{id}?stream=true&starting_after=N``):

- the ``queued`` entry: ``response.created``;
- the first ``start`` entry: ``response.in_progress``, ``response.output_item.added``,
  ``response.content_part.added`` (a redelivered job's later attempts add nothing);
- each ``tok`` entry with text: ``response.output_text.delta``;
- the ``end`` entry: ``response.output_text.done``, ``response.content_part.done``,
  ``response.output_item.done`` and ``response.completed`` (or ``response.incomplete`` when
  it stopped at ``max_output_tokens``); a failed job ends with ``response.failed``, a
  cancelled one with ``response.failed`` carrying the status ``cancelled``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.sse import KEEPALIVE, Timing, cancel_on_disconnect, sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job, JobStatus

RESPONSE_PREFIX = "resp_"
MESSAGE_PREFIX = "msg_"


def response_id(job: Job) -> str:
    return RESPONSE_PREFIX + job.id.hex


def job_id_of(value: str) -> str | None:
    """The job id behind a response id (None if it is not one of ours)."""
    if not value.startswith(RESPONSE_PREFIX):
        return None
    try:
        return str(uuid.UUID(hex=value.removeprefix(RESPONSE_PREFIX)))
    except ValueError:
        return None


def output_item_id(job: Job) -> str:
    return MESSAGE_PREFIX + job.id.hex


def _usage(usage: dict[str, int] | None, *, cached: bool = False) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": prompt if cached else 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


@dataclass
class State:
    """Where a response stands: from its row, or as its stream has told so far."""

    status: str  # a Responses status: queued, in_progress, completed, incomplete, failed, cancelled
    text: str = ""
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    started: bool = False
    item_status: str = "in_progress"
    extra: dict[str, Any] = field(default_factory=dict)


def _final_status(status: str, finish_reason: str) -> str:
    if status == JobStatus.SUCCEEDED:
        return "incomplete" if finish_reason in ("length", "content_filter") else "completed"
    if status == JobStatus.FAILED:
        return "failed"
    if status == JobStatus.CANCELLED:
        return "cancelled"
    return "in_progress" if status == JobStatus.RUNNING else "queued"


def state_of(job: Job) -> State:
    status = _final_status(job.status, job.finish_reason)
    state = State(status=status, text=job.output_text, usage=_usage(job.usage, cached=job.cache_hit))
    state.started = job.status != JobStatus.QUEUED or bool(job.output_text)
    state.item_status = {"completed": "completed", "incomplete": "incomplete"}.get(status, "in_progress")
    if status == "failed":
        state.error = {"code": "server_error", "message": job.error or "generation failed"}
    if job.finish_reason == "content_filter":
        state.extra["incomplete_reason"] = "content_filter"
    return state


def _message_item(job: Job, state: State, *, with_text: bool = True) -> dict[str, Any]:
    return {
        "id": output_item_id(job),
        "type": "message",
        "status": state.item_status,
        "role": "assistant",
        "content": [_part(state.text)] if with_text else [],
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(job: Job, state: State | None = None) -> dict[str, Any]:
    state = state or state_of(job)
    instructions = job.input.get("instructions") if isinstance(job.input, dict) else None
    params = job.params or {}
    output = [_message_item(job, state)] if state.started else []
    body: dict[str, Any] = {
        "id": response_id(job),
        "object": "response",
        "created_at": int(job.queued_at.timestamp()) if job.queued_at else 0,
        "status": state.status,
        "background": job.background,
        "error": state.error,
        "incomplete_details": (
            {"reason": state.extra.get("incomplete_reason", "max_output_tokens")}
            if state.status == "incomplete"
            else None
        ),
        "instructions": instructions,
        "max_output_tokens": job.input.get("max_output_tokens") if isinstance(job.input, dict) else None,
        "model": job.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": (RESPONSE_PREFIX + job.previous_id.hex) if job.previous_id else None,
        "reasoning": {"effort": None, "summary": None},
        "store": job.store,
        "temperature": params.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": params.get("top_p"),
        "truncation": "disabled",
        "usage": state.usage,
        "user": None,
        "metadata": job.metadata or {},
    }
    if state.status in ("completed", "incomplete", "failed", "cancelled") and job.finished_at:
        body["completed_at"] = int(job.finished_at.timestamp())
    return body


class Events:
    """Turns a job's stream entries into numbered Responses events."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.sequence = -1
        self.state = State(status="queued")
        self.item_id = output_item_id(job)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence, **fields}

    def _response(self) -> dict[str, Any]:
        return response_object(self.job, self.state)

    def _start(self) -> list[dict[str, Any]]:
        self.state.started = True
        self.state.status = "in_progress"
        return [
            self._event("response.in_progress", response=self._response()),
            self._event(
                "response.output_item.added",
                output_index=0,
                item=_message_item(self.job, State(status="in_progress"), with_text=False),
            ),
            self._event(
                "response.content_part.added",
                item_id=self.item_id,
                output_index=0,
                content_index=0,
                part=_part(""),
            ),
        ]

    def _delta(self, text: str) -> dict[str, Any]:
        self.state.text += text
        return self._event(
            "response.output_text.delta",
            item_id=self.item_id,
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def of(self, entry: StreamEntry) -> list[dict[str, Any]]:
        if entry.kind == EntryKind.QUEUED:
            return [self._event("response.created", response=self._response())]
        if entry.kind == EntryKind.START:
            return [] if self.state.started else self._start()
        if entry.kind == EntryKind.TOKEN and entry.text:
            return [self._delta(entry.text)]
        if entry.kind != EntryKind.END:
            return []
        events: list[dict[str, Any]] = []
        if entry.full_text is not None:  # the stream expired: the row has the whole text
            if self.sequence < 0:
                events.append(self._event("response.created", response=self._response()))
            if not self.state.started and entry.full_text:
                events += self._start()
            if entry.full_text:
                events.append(self._delta(entry.full_text))
        status = _final_status(entry.status, entry.finish_reason)
        self.state.status = status
        if entry.finish_reason == "content_filter":
            self.state.extra["incomplete_reason"] = "content_filter"
        self.state.usage = _usage(entry.usage, cached=entry.cache_hit)
        if status in ("completed", "incomplete") and self.state.started:
            self.state.item_status = status
            item = _message_item(self.job, self.state)
            events += [
                self._event(
                    "response.output_text.done",
                    item_id=self.item_id,
                    output_index=0,
                    content_index=0,
                    text=self.state.text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=self.item_id,
                    output_index=0,
                    content_index=0,
                    part=_part(self.state.text),
                ),
                self._event("response.output_item.done", output_index=0, item=item),
                self._event(f"response.{status}", response=self._final()),
            ]
        else:
            if status == "failed":
                self.state.error = {"code": "server_error", "message": entry.error or "generation failed"}
            events.append(self._event("response.failed", response=self._final()))
        return events

    def _final(self) -> dict[str, Any]:
        body = self._response()
        if "completed_at" not in body:
            body["completed_at"] = body["created_at"]
        return body


def event_stream(
    job: Job, *, starting_after: int = -1, cancel_if_gone: bool, started: float | None = None
) -> AsyncIterator[bytes]:
    """The response's events after ``starting_after`` (every one with the default), as SSE."""
    timing = Timing(job, started) if started is not None else None

    async def events() -> AsyncIterator[bytes]:
        shaper = Events(job)
        async for entry in job_client.follow(str(job.id)):
            if entry is None:
                yield KEEPALIVE
                continue
            for event in shaper.of(entry):
                if event["sequence_number"] <= starting_after:
                    continue
                if timing is not None and event["type"] == "response.output_text.delta":
                    timing.token()
                yield sse(event, event=event["type"])
        if timing is not None:
            timing.done()

    stream = events()
    return cancel_on_disconnect([str(job.id)], stream) if cancel_if_gone else stream


def input_items(job: Job) -> list[dict[str, Any]]:
    """The items a response was given (its input, not the history it continued)."""
    messages = job.input.get("messages", []) if isinstance(job.input, dict) else []
    ids = job.input.get("item_ids", []) if isinstance(job.input, dict) else []
    items = []
    for index, message in enumerate(messages):
        role = message.get("role", "user")
        items.append(
            {
                "id": ids[index] if index < len(ids) else f"{MESSAGE_PREFIX}{job.id.hex}_{index}",
                "type": "message",
                "role": role,
                "status": "completed",
                "content": [
                    {
                        "type": "output_text" if role == "assistant" else "input_text",
                        "text": message.get("content", ""),
                        **({"annotations": []} if role == "assistant" else {}),
                    }
                ],
            }
        )
    return items
