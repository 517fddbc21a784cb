"""OpenAI SSE streams of jobs, read to their end: the chunks of a chat (text, tool calls,
finish, usage), of a completion (echo, usage so far), a failed job's error chunk and a refusal
after waiting. The streams are written to the suite's real Valkey as a worker writes them
(the job rows are unsaved: a stream with its end entry is never completed from the row)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import ApiError
from gateway.openai.shaping import Shape
from gateway.openai.streaming import chat_stream, completion_stream, refused
from inference.jobstream import StreamEntry
from inference.tools.calls import ToolPlan
from inference.versions.registry import ServedModel
from tests.conftest import TEST_MODEL_NAME
from tests.gateway.openai.test_shaping import CREATED, USAGE, WEATHER, end, make_job, token, write


async def read(stream: AsyncIterator[bytes]) -> list[Any]:
    """Each data event decoded ("[DONE]" as it is); keepalive comments left out."""
    out: list[Any] = []
    async for chunk in stream:
        if chunk.startswith(b":"):
            continue
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and chunk.count(b"\n") == 2
        data = chunk.removeprefix(b"data: ").strip().decode()
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_a_refusal_after_waiting_is_an_error_chunk_then_done() -> None:
    exc = ApiError("Too many.", status_code=429, code="rate_limit_exceeded", headers={"Retry-After": "7"})
    error, done = refused(exc)
    assert done == b"data: [DONE]\n\n"
    assert json.loads(error.removeprefix(b"data: ")) == {
        "error": {
            "message": "Too many.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
            "retry_after_s": 7,
        }
    }
    overloaded = ApiError("Busy.", status_code=503, code="overloaded")  # no Retry-After: 1 s
    assert json.loads(refused(overloaded)[0].removeprefix(b"data: "))["error"]["retry_after_s"] == 1


async def test_a_chat_stream_opens_streams_the_text_finishes_and_reports_usage(
    model: ServedModel, written: list[str]
) -> None:
    job = make_job()
    write(written, job, StreamEntry.start(1), token("Hel", [44]), token("lo", [529]), end(cache_hit=True))
    events = await read(
        chat_stream([job], shape=Shape(model=model, logprobs=None, include_usage=True), started=0.0)
    )
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    top = {
        "id": f"chatcmpl-{job.id.hex}",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": TEST_MODEL_NAME,
        "system_fingerprint": "fp_sluice_0_default",
    }
    assert all({key: chunk[key] for key in top} == top for chunk in chunks)
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"role": "assistant", "content": "", "tool_calls": None}, None),
        ({"role": "assistant", "content": "Hel", "tool_calls": None}, None),
        ({"role": "assistant", "content": "lo", "tool_calls": None}, None),
        ({"role": "assistant", "content": "", "tool_calls": None}, "stop"),
    ]
    assert chunks[-1]["cache_hit"] is True
    assert usage == {**top, "choices": [], "usage": USAGE}


async def test_a_chat_stream_turns_a_tool_call_into_call_chunks(
    model: ServedModel, written: list[str]
) -> None:
    job = make_job()
    write(
        written,
        job,
        token("Sure. <tool_", [1]),
        token('call>{"name": "get_weather", "arguments": {}}', [2]),
        token("</tool_call>", [3]),
        end(),
    )
    shape = Shape(model=model, logprobs=None, tools=ToolPlan(tools=(WEATHER,)))
    events = await read(chat_stream([job], shape=shape, started=0.0))
    deltas = [(e["choices"][0]["delta"], e["choices"][0]["finish_reason"]) for e in events[:-1]]
    call_id = f"call_{job.id.hex[:24]}_0"
    assert deltas == [
        ({"role": "assistant", "content": "", "tool_calls": None}, None),
        ({"role": "assistant", "content": "Sure. ", "tool_calls": None}, None),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ],
            },
            None,
        ),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}],
            },
            None,
        ),
        ({"role": "assistant", "content": "", "tool_calls": None}, "tool_calls"),
    ]


async def test_a_failed_job_ends_its_stream_with_an_error_chunk(
    model: ServedModel, written: list[str]
) -> None:
    job = make_job()
    write(written, job, token("Hel", [44]), end("failed", "error", usage=None, error="worker lost"))
    events = await read(chat_stream([job], shape=Shape(model=model, logprobs=None), started=0.0))
    assert events[-2:] == [
        {"error": {"message": "worker lost", "type": "server_error", "param": None, "code": "error"}},
        "[DONE]",
    ]


async def test_a_completion_stream_echoes_the_prompt_with_its_first_text(
    model: ServedModel, written: list[str]
) -> None:
    job = make_job(kind="completion", input={"prompt": "Say"})
    write(written, job, token(" hi", [1], n=1), token("!", [2], n=2), end(reason="length"))
    shape = Shape(model=model, logprobs=None, echo=True, continuous_usage=True)
    events = await read(completion_stream([job], shape=shape, started=0.0))
    assert events[-1] == "[DONE]"
    assert [
        (e["object"], e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in events[:-1]
    ] == [
        ("text_completion", "Say hi", None),
        ("text_completion", "!", None),
        ("text_completion", "", "length"),
    ]
    # continuous_usage_stats: usage so far on every chunk (the gateway's prompt count, then the worker's).
    assert [e["usage"]["completion_tokens"] for e in events[:-1]] == [1, 2, 2]
    assert events[-2]["usage"] == USAGE
