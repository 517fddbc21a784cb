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

from collections.abc import AsyncIterator
from typing import Any

from gateway.responses.shaping import (
    State,
    call_item,
    call_reader,
    final_status,
    message_item,
    output_item_id,
    response_object,
    text_part,
    usage_object,
)
from gateway.sse import KEEPALIVE, Timing, cancel_on_disconnect, sse
from inference.client import job_client
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job
from inference.tools.stream import Arguments, Call, CallStart, Content, Event


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
                item=message_item(self.job, State(status="in_progress"), with_text=False),
            ),
            self._event(
                "response.content_part.added",
                item_id=self.item_id,
                output_index=self.message_index,
                content_index=0,
                part=text_part(""),
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
                        item=call_item(call, status="in_progress", arguments=""),
                    )
                )
            elif isinstance(part, Arguments) and self.open_call is not None:
                call, index = self.open_call
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=call_item(call)["id"],
                        output_index=index,
                        delta=part.text,
                    )
                )
        return events

    def _close_call(self) -> list[dict[str, Any]]:
        if self.open_call is None:
            return []
        (call, index), self.open_call = self.open_call, None
        item = call_item(call)
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
                part=text_part(self.state.text),
            ),
            self._event(
                "response.output_item.done", output_index=index, item=message_item(self.job, message)
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
        status = final_status(entry.status, entry.finish_reason)
        self.state.status = status
        if entry.finish_reason == "content_filter":
            self.state.extra["incomplete_reason"] = "content_filter"
        self.state.usage = usage_object(entry.usage, cached=entry.cache_hit)
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
