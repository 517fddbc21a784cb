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

With function tools, the output is read as it streams (inference/tools/calls.py): text opens a
``message`` item as above, a call a ``function_call`` item with
``response.function_call_arguments.delta`` / ``.done`` events; the message item opens at its
first text rather than at the start, and closes when a call begins.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.sse import KEEPALIVE, Timing, cancel_on_disconnect, sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job, JobStatus
from inference.tools.calls import Arguments, Call, CallStart, Content, Event, ToolCallStream, ToolPlan

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
    #: Function calls read from the output (with tools), in order.
    calls: list[Call] = field(default_factory=list)


def _final_status(status: str, finish_reason: str) -> str:
    if status == JobStatus.SUCCEEDED:
        return "incomplete" if finish_reason in ("length", "content_filter") else "completed"
    if status == JobStatus.FAILED:
        return "failed"
    if status == JobStatus.CANCELLED:
        return "cancelled"
    return "in_progress" if status == JobStatus.RUNNING else "queued"


def tools_of(job: Job) -> ToolPlan | None:
    plan = job.input.get("tool_plan") if isinstance(job.input, dict) else None
    return ToolPlan.from_dict(plan) if plan else None


def call_reader(job: Job) -> ToolCallStream | None:
    plan = tools_of(job)
    return (
        ToolCallStream(plan, call_id=f"call_{job.id.hex[:24]}") if plan is not None and plan.active else None
    )


def state_of(job: Job) -> State:
    status = _final_status(job.status, job.finish_reason)
    text = job.output_text
    calls: list[Call] = []
    reader = call_reader(job)
    if reader is not None:
        reader.read_all(text)
        text, calls = reader.content.strip() if reader.calls else text, reader.calls
    state = State(status=status, text=text, usage=_usage(job.usage, cached=job.cache_hit), calls=calls)
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


def _call_item(call: Call, *, status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
    return {
        "id": "fc_" + call.id.removeprefix("call_"),
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if arguments is None else arguments,
        "status": status,
    }


def _output(job: Job, state: State) -> list[dict[str, Any]]:
    if not state.started:
        return []
    items = [_message_item(job, state)] if state.text or not state.calls else []
    return items + [_call_item(call) for call in state.calls]


def response_object(job: Job, state: State | None = None) -> dict[str, Any]:
    state = state or state_of(job)
    instructions = job.input.get("instructions") if isinstance(job.input, dict) else None
    params = job.params or {}
    output = _output(job, state)
    plan = tools_of(job)
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
        "parallel_tool_calls": plan.parallel if plan is not None else True,
        "previous_response_id": (RESPONSE_PREFIX + job.previous_id.hex) if job.previous_id else None,
        "reasoning": {"effort": None, "summary": None},
        "store": job.store,
        "temperature": params.get("temperature"),
        "text": {
            "format": (job.input.get("text_format") if isinstance(job.input, dict) else None)
            or {"type": "text"}
        },
        "tool_choice": _tool_choice(plan),
        "tools": [_tool_out(tool) for tool in plan.tools] if plan is not None else [],
        "top_p": params.get("top_p"),
        "truncation": "disabled",
        "usage": state.usage,
        "user": None,
        "metadata": job.metadata or {},
    }
    if state.status in ("completed", "incomplete", "failed", "cancelled") and job.finished_at:
        body["completed_at"] = int(job.finished_at.timestamp())
    return body


def _tool_choice(plan: ToolPlan | None) -> Any:
    if plan is None:
        return "auto"
    return {"type": "function", "name": plan.name} if plan.mode == "function" else plan.mode


def _tool_out(tool: dict[str, Any]) -> dict[str, Any]:
    """A chat-shaped function tool as the Responses API writes it (flat)."""
    function = tool["function"]
    return {
        "type": "function",
        "name": function["name"],
        "description": function.get("description"),
        "parameters": function.get("parameters"),
        "strict": True,
    }


class Events:
    """Turns a job's stream entries into numbered Responses events."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.sequence = -1
        self.state = State(status="queued")
        self.item_id = output_item_id(job)
        #: With tools: reads calls from the text; the message item opens at its first text.
        self.reader = call_reader(job)
        self.message_open = False
        self.message_index: int | None = None
        self.items = 0  # output items opened so far (the next one's output_index)
        self.open_call: tuple[Call, int] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence, **fields}

    def _response(self) -> dict[str, Any]:
        return response_object(self.job, self.state)

    def _start(self) -> list[dict[str, Any]]:
        self.state.started = True
        self.state.status = "in_progress"
        events = [self._event("response.in_progress", response=self._response())]
        if self.reader is None:
            events += self._open_message()
        return events

    def _open_message(self) -> list[dict[str, Any]]:
        self.message_open, self.message_index = True, self.items
        self.items += 1
        return [
            self._event(
                "response.output_item.added",
                output_index=self.message_index,
                item=_message_item(self.job, State(status="in_progress"), with_text=False),
            ),
            self._event(
                "response.content_part.added",
                item_id=self.item_id,
                output_index=self.message_index,
                content_index=0,
                part=_part(""),
            ),
        ]

    def _delta(self, text: str) -> list[dict[str, Any]]:
        events = [] if self.message_open else self._open_message()
        self.state.text += text
        return [
            *events,
            self._event(
                "response.output_text.delta",
                item_id=self.item_id,
                output_index=self.message_index,
                content_index=0,
                delta=text,
                logprobs=[],
            ),
        ]

    def _text(self, text: str) -> list[dict[str, Any]]:
        """New output text: a delta of the message, or (with tools) whatever it turns out to be."""
        if self.reader is None:
            return self._delta(text)
        return self._tool_events(self.reader.feed(text))

    def _tool_events(self, parts: list[Event]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, Content):
                events += self._delta(part.text)
            elif isinstance(part, CallStart):
                events += self._close_call() + self._close_message("completed")
                call = self.reader.calls[part.index] if self.reader is not None else Call(part.id, part.name)
                self.open_call = (call, self.items)
                self.items += 1
                self.state.calls.append(call)
                events.append(
                    self._event(
                        "response.output_item.added",
                        output_index=self.open_call[1],
                        item=_call_item(call, status="in_progress", arguments=""),
                    )
                )
            elif isinstance(part, Arguments) and self.open_call is not None:
                call, index = self.open_call
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=_call_item(call)["id"],
                        output_index=index,
                        delta=part.text,
                    )
                )
        return events

    def _close_call(self) -> list[dict[str, Any]]:
        if self.open_call is None:
            return []
        (call, index), self.open_call = self.open_call, None
        item = _call_item(call)
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=call.arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        if not self.message_open:
            return []
        self.message_open = False
        message = State(status=status, text=self.state.text, item_status=status)
        index = self.message_index
        return [
            self._event(
                "response.output_text.done",
                item_id=self.item_id,
                output_index=index,
                content_index=0,
                text=self.state.text,
                logprobs=[],
            ),
            self._event(
                "response.content_part.done",
                item_id=self.item_id,
                output_index=index,
                content_index=0,
                part=_part(self.state.text),
            ),
            self._event(
                "response.output_item.done", output_index=index, item=_message_item(self.job, message)
            ),
        ]

    def of(self, entry: StreamEntry) -> list[dict[str, Any]]:
        if entry.kind == EntryKind.QUEUED:
            return [self._event("response.created", response=self._response())]
        if entry.kind == EntryKind.START:
            return [] if self.state.started else self._start()
        if entry.kind == EntryKind.TOKEN and entry.text:
            return self._text(entry.text)
        if entry.kind != EntryKind.END:
            return []
        events: list[dict[str, Any]] = []
        if entry.full_text is not None:  # the stream expired: the row has the whole text
            if self.sequence < 0:
                events.append(self._event("response.created", response=self._response()))
            if not self.state.started and entry.full_text:
                events += self._start()
            if entry.full_text:
                events += self._text(entry.full_text)
        if self.reader is not None:
            events += self._tool_events(self.reader.finish())
        status = _final_status(entry.status, entry.finish_reason)
        self.state.status = status
        if entry.finish_reason == "content_filter":
            self.state.extra["incomplete_reason"] = "content_filter"
        self.state.usage = _usage(entry.usage, cached=entry.cache_hit)
        if status in ("completed", "incomplete") and self.state.started:
            self.state.item_status = status
            if self.message_index is None and not self.state.calls:
                events += self._open_message()  # an empty answer still has its message
            events += self._close_call() + self._close_message(status)
            events.append(self._event(f"response.{status}", response=self._final()))
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
    items: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.get("role", "user")
        item_id = ids[index] if index < len(ids) else f"{MESSAGE_PREFIX}{job.id.hex}_{index}"
        if role == "tool":
            items.append(
                {
                    "id": item_id,
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id", ""),
                    "output": message.get("content", ""),
                    "status": "completed",
                }
            )
            continue
        if message.get("tool_calls"):
            for call in message["tool_calls"]:
                arguments = call["function"]["arguments"]
                items.append(
                    {
                        "id": "fc_" + str(call["id"]).removeprefix("call_"),
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": call["function"]["name"],
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                        "status": "completed",
                    }
                )
            continue
        items.append(
            {
                "id": item_id,
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
