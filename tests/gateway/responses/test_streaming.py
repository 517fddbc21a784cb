"""A response's numbered events, shaped from its job's stream entries (job rows unsaved: only
their fields are read): the order from ``response.created`` to the end, redelivery, a stream
that expired, each way a stream ends, tool calls; and the SSE replay from a
``sequence_number``, which reads a stream written to the suite's real Valkey as a worker
writes it. No server, no worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.responses.shaping import response_object
from gateway.responses.streaming import Events, event_stream
from inference.core.redis import get_redis
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job
from inference.store import get_streams
from inference.streams import stream_key
from inference.tools.calls import ToolPlan
from tests.gateway.responses.test_shaping import CREATED, WEATHER, end, make_job, token


def events_of(job: Job, *entries: StreamEntry) -> list[dict[str, Any]]:
    shaper = Events(job)
    return [event for entry in entries for event in shaper.of(entry)]


def types(events: list[dict[str, Any]]) -> list[str]:
    assert [e["sequence_number"] for e in events] == list(range(len(events)))  # numbered from 0, no gaps
    return [e["type"].removeprefix("response.") for e in events]


MESSAGE_EVENTS = ["output_item.added", "content_part.added"]
CLOSING_EVENTS = ["output_text.done", "content_part.done", "output_item.done"]


def test_a_streamed_response_is_numbered_events_from_created_to_completed() -> None:
    job = make_job()
    events = events_of(
        job,
        StreamEntry.queued(),
        StreamEntry.start(1),
        token("Hel"),
        token("lo"),
        StreamEntry.token(text="", token_ids=[4], logprobs=[-0.1], completion_tokens=2),  # an EOS: no text
        end(),
    )
    assert types(events) == [
        "created",
        "in_progress",
        *MESSAGE_EVENTS,
        "output_text.delta",
        "output_text.delta",
        *CLOSING_EVENTS,
        "completed",
    ]
    item_id = f"msg_{job.id.hex}"
    assert events[0]["response"]["status"] == "queued" and events[0]["response"]["output"] == []
    assert events[2]["item"] == {
        "id": item_id,
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert [(e["item_id"], e["output_index"], e["delta"]) for e in events[4:6]] == [
        (item_id, 0, "Hel"),
        (item_id, 0, "lo"),
    ]
    assert events[6]["text"] == "Hello" and events[7]["part"]["text"] == "Hello"
    assert events[8]["item"]["status"] == "completed"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["output_tokens"] == 2 and final["completed_at"] == CREATED


def test_a_redelivered_start_adds_nothing_and_an_expired_stream_replays_from_the_row() -> None:
    job = make_job()
    again = events_of(job, StreamEntry.queued(), StreamEntry.start(1), token("a"), StreamEntry.start(2))
    assert types(again) == ["created", "in_progress", *MESSAGE_EVENTS, "output_text.delta"]
    # The stream is gone: the follower gets one end entry carrying the row's whole text.
    expired = events_of(job, end(full_text="Hello there"))
    assert types(expired) == [
        "created",
        "in_progress",
        *MESSAGE_EVENTS,
        "output_text.delta",
        *CLOSING_EVENTS,
        "completed",
    ]
    assert expired[4]["delta"] == "Hello there"


@pytest.mark.parametrize(
    ("entry", "last", "status", "details"),
    [
        (end(reason="length"), "incomplete", "incomplete", {"reason": "max_output_tokens"}),
        (end(reason="content_filter"), "incomplete", "incomplete", {"reason": "content_filter"}),
        (end("failed", "error", usage=None, error="worker lost"), "failed", "failed", None),
        (end("cancelled", "cancelled", usage=None), "failed", "cancelled", None),
    ],
)
def test_how_a_stream_ends(entry: StreamEntry, last: str, status: str, details: Any) -> None:
    events = events_of(make_job(), StreamEntry.queued(), StreamEntry.start(1), token("Hi"), entry)
    final = events[-1]
    assert final["type"] == f"response.{last}"
    assert (final["response"]["status"], final["response"]["incomplete_details"]) == (status, details)
    if status == "failed":
        assert final["response"]["error"] == {"code": "server_error", "message": "worker lost"}
    else:
        assert final["response"]["error"] is None


def test_an_empty_answer_still_has_its_message() -> None:
    events = events_of(make_job(), StreamEntry.queued(), StreamEntry.start(1), end())
    assert types(events) == ["created", "in_progress", *MESSAGE_EVENTS, *CLOSING_EVENTS, "completed"]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""


def test_text_then_a_tool_call_is_a_message_item_then_a_function_call_item() -> None:
    plan = ToolPlan(tools=(WEATHER,))
    job = make_job(input={"messages": [], "tool_plan": plan.as_dict()})
    events = events_of(
        job,
        StreamEntry.queued(),
        StreamEntry.start(1),
        token("Sure.<tool_call>"),
        token('{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'),
        end(),
    )
    assert types(events) == [
        "created",
        "in_progress",  # with tools, the message opens at its first text
        *MESSAGE_EVENTS,
        "output_text.delta",
        *CLOSING_EVENTS,  # a call begins: the message closes
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ]
    call_item = f"fc_{job.id.hex[:24]}_0"
    assert events[8]["output_index"] == 1 and events[8]["item"]["status"] == "in_progress"
    assert (events[9]["item_id"], events[9]["delta"]) == (call_item, '{"city": "Paris"}')
    assert events[10]["arguments"] == '{"city": "Paris"}'
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call"]
    assert output[0]["content"][0]["text"] == "Sure."
    assert output[1]["call_id"] == f"call_{job.id.hex[:24]}_0" and output[1]["status"] == "completed"


@pytest.fixture
def streamed_job() -> Iterator[Job]:
    job = make_job()
    streams = get_streams()
    streams.open(str(job.id))
    for entry in (StreamEntry.start(1), token("Hel"), token("lo"), end()):
        if entry.kind == EntryKind.END:
            assert streams.finish(str(job.id), entry)
        else:
            assert streams.append(str(job.id), entry)
    yield job
    get_redis().delete(stream_key(str(job.id)))


async def test_a_reconnecting_client_gets_exactly_the_events_it_missed(streamed_job: Job) -> None:
    chunks = [chunk async for chunk in event_stream(streamed_job, starting_after=5, cancel_if_gone=False)]
    parsed = []
    for chunk in chunks:
        event_line, data_line, blank, end_ = chunk.decode().split("\n")
        assert (
            (blank, end_) == ("", "") and event_line.startswith("event: ") and data_line.startswith("data: ")
        )
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        parsed.append((data["sequence_number"], data["type"]))
    assert parsed == [
        (6, "response.output_text.done"),
        (7, "response.content_part.done"),
        (8, "response.output_item.done"),
        (9, "response.completed"),
    ]
    every = [chunk async for chunk in event_stream(streamed_job, cancel_if_gone=True, started=0.0)]
    assert len(every) == 10 and every[-4:] == chunks  # the same events, byte for byte


def test_text_before_a_tool_call_reads_the_same_streamed_and_fetched() -> None:
    """The message a stream sent before a call (spaces included) is the message the response
    object has when fetched later: both come from the same text."""
    plan = ToolPlan(tools=(WEATHER,))
    text = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    job = make_job(input={"messages": [], "tool_plan": plan.as_dict()}, output_text=text)
    events = events_of(job, StreamEntry.queued(), StreamEntry.start(1), token(text), end())
    streamed = events[-1]["response"]["output"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    fetched = response_object(job)["output"]
    assert streamed[0]["content"][0]["text"] == deltas == fetched[0]["content"][0]["text"]
    assert [item["type"] for item in fetched] == ["message", "function_call"]
    assert fetched[1]["arguments"] == streamed[1]["arguments"] == '{"city": "Paris"}'
