"""Response objects and input items shaped from job rows (unsaved: only their fields are read):
statuses, usage, tool calls, a response's own input. The helpers here serve test_streaming.py
too. No server, no worker, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.responses.shaping import (
    input_items,
    job_id_of,
    output_item_id,
    response_id,
    response_object,
    state_of,
)
from inference.jobstream import StreamEntry
from inference.models import Job, JobStatus
from inference.tools.calls import ToolPlan
from tests.conftest import TEST_MODEL_NAME

QUEUED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
CREATED = int(QUEUED_AT.timestamp())
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "model": TEST_MODEL_NAME,
        "kind": "chat",
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "status": JobStatus.SUCCEEDED,
        "finish_reason": "eos",
        "queued_at": QUEUED_AT,
        **fields,
    }
    return Job(**values)


def token(text: str) -> StreamEntry:
    return StreamEntry.token(text=text, token_ids=[1], logprobs=[-0.5], completion_tokens=1)


def end(status: str = "succeeded", reason: str = "eos", **more: Any) -> StreamEntry:
    return StreamEntry.end(status=status, finish_reason=reason, usage=more.pop("usage", USAGE), **more)


def test_response_ids_name_their_job_and_nothing_else() -> None:
    job = make_job()
    assert response_id(job) == f"resp_{job.id.hex}" and output_item_id(job) == f"msg_{job.id.hex}"
    assert job_id_of(response_id(job)) == str(job.id)
    assert job_id_of(f"chatcmpl-{job.id.hex}") is None
    assert job_id_of("resp_not-hex") is None
    assert job_id_of("resp_") is None


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (JobStatus.SUCCEEDED, "eos", "completed"),
        (JobStatus.SUCCEEDED, "stop_sequence", "completed"),
        (JobStatus.SUCCEEDED, "length", "incomplete"),
        (JobStatus.SUCCEEDED, "content_filter", "incomplete"),
        (JobStatus.FAILED, "error", "failed"),
        (JobStatus.CANCELLED, "cancelled", "cancelled"),
        (JobStatus.RUNNING, "", "in_progress"),
        (JobStatus.QUEUED, "", "queued"),
    ],
)
def test_a_jobs_status_in_the_responses_words(status: str, reason: str, expected: str) -> None:
    assert state_of(make_job(status=status, finish_reason=reason)).status == expected


def test_a_finished_response_object() -> None:
    previous = uuid.uuid4()
    job = make_job(
        input={"messages": [], "instructions": "Be brief.", "max_output_tokens": 50},
        params={"temperature": 0.2, "top_p": 0.9, "max_tokens": 50},
        output_text="Hello",
        prompt_tokens=3,
        completion_tokens=2,
        cache_hit=True,
        finished_at=QUEUED_AT + timedelta(seconds=2),
        metadata={"ticket": "42"},
        previous_id=previous,
        background=True,
    )
    assert response_object(job) == {
        "id": f"resp_{job.id.hex}",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "background": True,
        "error": None,
        "incomplete_details": None,
        "instructions": "Be brief.",
        "max_output_tokens": 50,
        "model": TEST_MODEL_NAME,
        "output": [
            {
                "id": f"msg_{job.id.hex}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": f"resp_{previous.hex}",
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 0.2,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 0.9,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 3,
            "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 0},  # a result-cache hit
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 5,
        },
        "user": None,
        "metadata": {"ticket": "42"},
        "completed_at": CREATED + 2,
    }


def test_unfinished_incomplete_and_failed_response_objects() -> None:
    queued = response_object(make_job(status=JobStatus.QUEUED, finish_reason=""))
    assert (queued["status"], queued["output"], queued["usage"]) == ("queued", [], None)
    assert "completed_at" not in queued and queued["previous_response_id"] is None
    length = response_object(make_job(finish_reason="length", output_text="Hel", prompt_tokens=3))
    assert length["incomplete_details"] == {"reason": "max_output_tokens"}
    assert length["output"][0]["status"] == "incomplete"
    filtered = response_object(make_job(finish_reason="content_filter", output_text="x"))
    assert filtered["incomplete_details"] == {"reason": "content_filter"}
    failed = response_object(make_job(status=JobStatus.FAILED, finish_reason="error", error="worker lost"))
    assert failed["error"] == {"code": "server_error", "message": "worker lost"}
    assert state_of(make_job(status=JobStatus.FAILED, finish_reason="error")).error == {
        "code": "server_error",
        "message": "generation failed",
    }


def test_a_forced_function_call_is_a_function_call_item() -> None:
    plan = ToolPlan(tools=(WEATHER,), mode="function", name="get_weather", parallel=False)
    job = make_job(
        input={"messages": [], "tool_plan": plan.as_dict()}, output_text='{"city": "Paris"}', prompt_tokens=9
    )
    body = response_object(job)
    call_id = f"call_{job.id.hex[:24]}_0"
    assert body["output"] == [
        {
            "id": f"fc_{job.id.hex[:24]}_0",
            "type": "function_call",
            "call_id": call_id,
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
            "status": "completed",
        }
    ]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["parallel_tool_calls"] is False
    assert body["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": None,
            "parameters": {"type": "object"},
            "strict": True,
        }
    ]


def test_input_items_are_the_responses_own_input() -> None:
    job = make_job(
        input={
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_7", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                    ],
                },
                {"role": "tool", "content": "sunny", "tool_call_id": "call_7"},
                {"role": "assistant", "content": "Sunny."},
            ],
            "item_ids": ["msg_given"],
        }
    )
    assert input_items(job) == [
        {
            "id": "msg_given",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": "Weather in Paris?"}],
        },
        {
            "id": "fc_7",
            "type": "function_call",
            "call_id": "call_7",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
            "status": "completed",
        },
        {
            "id": f"msg_{job.id.hex}_2",
            "type": "function_call_output",
            "call_id": "call_7",
            "output": "sunny",
            "status": "completed",
        },
        {
            "id": f"msg_{job.id.hex}_3",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}],
        },
    ]
    assert input_items(make_job(input={})) == []
