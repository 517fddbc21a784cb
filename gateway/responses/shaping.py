"""Response objects, shaped from a job's row and stream entries; their streamed events are
in ``streaming.py``."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from inference.models import Job, JobStatus
from inference.tools.calls import ToolPlan
from inference.tools.stream import Call, ToolCallStream

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


def usage_object(usage: dict[str, int] | None, *, cached: bool = False) -> dict[str, Any] | None:
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


def final_status(status: str, finish_reason: str) -> str:
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
    status = final_status(job.status, job.finish_reason)
    text = job.output_text
    calls: list[Call] = []
    reader = call_reader(job)
    if reader is not None:
        reader.read_all(text)
        # The text the stream sent before the calls, as it sent it: a client that read the stream
        # and one that fetches the response see the same message.
        text, calls = reader.content if reader.calls else text, reader.calls
    state = State(status=status, text=text, usage=usage_object(job.usage, cached=job.cache_hit), calls=calls)
    state.started = job.status != JobStatus.QUEUED or bool(job.output_text)
    state.item_status = {"completed": "completed", "incomplete": "incomplete"}.get(status, "in_progress")
    if status == "failed":
        state.error = {"code": "server_error", "message": job.error or "generation failed"}
    if job.finish_reason == "content_filter":
        state.extra["incomplete_reason"] = "content_filter"
    return state


def message_item(job: Job, state: State, *, with_text: bool = True) -> dict[str, Any]:
    return {
        "id": output_item_id(job),
        "type": "message",
        "status": state.item_status,
        "role": "assistant",
        "content": [text_part(state.text)] if with_text else [],
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(call: Call, *, status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
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
    items = [message_item(job, state)] if state.text or not state.calls else []
    return items + [call_item(call) for call in state.calls]


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
