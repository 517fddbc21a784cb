"""Tool calling through a live server with unchanged clients: the openai SDK (each tool_choice,
streamed deltas, tool results back in), huggingface_hub's chat_completion, and the Responses
API with function tools. The tiny demo model never calls a tool on its own; ``required`` and a
named function make it, and the calls it makes are valid against their schemas."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from huggingface_hub import InferenceClient

from inference.models import Job
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(live: Live, api_user: ApiUser) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0, timeout=120)


def _valid(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    if name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
        assert isinstance(args["city"], str) and len(args["city"]) <= 16
    else:
        assert name == "get_time" and args["zone"] in ("UTC", "CET", "PST")
    return args


def test_required_and_named_calls(client: openai.OpenAI) -> None:
    for seed in range(3):
        response = client.chat.completions.create(
            model=TEST_MODEL_NAME,
            messages=ASK,
            tools=[WEATHER, CLOCK],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            seed=seed,
        )
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
        _valid(calls[0].function.name, calls[0].function.arguments)
    named = client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=ASK,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=40,
        seed=1,
    )
    call = (named.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_time" and named.choices[0].message.content is None  # type: ignore[union-attr]
    _valid("get_time", call.function.arguments)  # type: ignore[union-attr]


def test_auto_renders_the_tools_and_none_does_not(client: openai.OpenAI) -> None:
    auto = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=ASK, tools=[WEATHER], max_tokens=6, temperature=0
    )
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
    rendered = Job.objects.get(id=auto.id.removeprefix("chatcmpl-")).rendered_prompt
    assert "<tools>" in rendered and '"name":"get_weather"' in rendered
    none = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=6, temperature=0
    )
    assert "<tools>" not in Job.objects.get(id=none.id.removeprefix("chatcmpl-")).rendered_prompt
    assert none.choices[0].message.tool_calls is None


def test_streamed_deltas_accumulate_to_the_calls(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=TEST_MODEL_NAME,
        messages=ASK,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        max_tokens=100,
        seed=7,
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(deltas) >= 1
    calls = final.choices[0].message.tool_calls or []
    assert calls and final.choices[0].finish_reason == "tool_calls"
    for call in calls:
        _valid(call.function.name, call.function.arguments)
    assert len({call.id for call in calls}) == len(calls)
    # Named: the arguments themselves stream, token by token.
    chunks = list(
        client.chat.completions.create(
            model=TEST_MODEL_NAME,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            seed=3,
            stream=True,
        )
    )
    pieces = [
        c.choices[0].delta.tool_calls[0].function.arguments  # type: ignore[union-attr]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    assert len([p for p in pieces if p]) > 2
    _valid("get_weather", "".join(p or "" for p in pieces))


def test_tool_results_go_back_to_the_model(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80, seed=2
    )
    message = first.choices[0].message
    call = (message.tool_calls or [])[0]
    history: list[Any] = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    second = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=history, tools=[WEATHER], max_tokens=8, temperature=0
    )
    rendered = Job.objects.get(id=second.id.removeprefix("chatcmpl-")).rendered_prompt
    assert "<tool_response>" in rendered and '{"temperature": 21}' in rendered
    assert "<tool_call>" in rendered and call.function.name in rendered  # type: ignore[union-attr]


def test_a_custom_role_is_rendered_by_the_template(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=[{"role": "critic", "content": "Be short."}, *ASK],  # type: ignore[misc, list-item]
        max_tokens=4,
        temperature=0,
    )
    assert (
        "<|critic|>\nBe short." in Job.objects.get(id=response.id.removeprefix("chatcmpl-")).rendered_prompt
    )


def test_huggingface_hub_tools(live: Live, api_user: ApiUser) -> None:
    client = InferenceClient(base_url=f"{live.base_url}/v1", api_key=api_user.key)
    output = client.chat_completion(
        messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=80, seed=4
    )
    call = output.choices[0].message.tool_calls[0]  # type: ignore[index]
    _valid(call.function.name, call.function.arguments)
    named = client.chat_completion(  # type: ignore[call-overload]
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"function": {"name": "get_weather"}},
        max_tokens=60,
        seed=4,
    )
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
    streamed = list(
        client.chat_completion(
            messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=80, seed=4, stream=True
        )
    )
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in streamed
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments) == json.loads(call.function.arguments)


RESPONSES_TOOLS: list[Any] = [
    {
        "type": "function",
        "name": f["function"]["name"],
        "parameters": f["function"]["parameters"],
        "strict": True,
    }
    for f in (WEATHER, CLOCK)
]


def test_responses_function_calls_and_outputs(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=TEST_MODEL_NAME,
        input="What is the weather in Paris?",
        tools=RESPONSES_TOOLS,
        tool_choice="required",
        # One call: the Responses API has no seed, and several calls may not close in the budget.
        parallel_tool_calls=False,
        max_output_tokens=100,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and response.status == "completed"
    for call in calls:
        _valid(call.name, call.arguments)
        assert call.call_id.startswith("call_") and (call.id or "").startswith("fc_")
    # The call and its output go back in; the next turn's prompt carries both.
    follow = client.responses.create(
        model=TEST_MODEL_NAME,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            *[c.model_dump(exclude_none=True) for c in calls],  # type: ignore[list-item]
            *[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls],  # type: ignore[list-item]
        ],
        tools=RESPONSES_TOOLS[:1],
        max_output_tokens=6,
        temperature=0,
    )
    rendered = Job.objects.get(id=follow.id.removeprefix("resp_")).rendered_prompt
    assert "<tool_response>sunny</tool_response>" in rendered and "<tool_call>" in rendered
    items = client.responses.input_items.list(follow.id)
    item_kinds = [item.type for item in items.data]
    assert "function_call" in item_kinds and "function_call_output" in item_kinds
    # Named, streamed: the call's item, its argument deltas, its done events.
    events: list[Any] = list(
        client.responses.create(
            model=TEST_MODEL_NAME,
            input="Time?",
            tools=RESPONSES_TOOLS,
            tool_choice={"type": "function", "name": "get_time"},
            max_output_tokens=40,
            stream=True,
        )
    )
    kinds = [str(event.type) for event in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == done.arguments
    _valid("get_time", deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert [item.type for item in final.output] == ["function_call"]


def test_responses_text_format_json_schema(client: openai.OpenAI) -> None:
    schema = WEATHER["function"]["parameters"]
    response = client.responses.create(
        model=TEST_MODEL_NAME,
        input="Weather as JSON.",
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}},
        max_output_tokens=80,
        temperature=1.0,
    )
    _valid("get_weather", response.output_text)
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]
