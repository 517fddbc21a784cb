"""Tool calls read from text, whole or streamed in arbitrary pieces: the same calls either way."""

from __future__ import annotations

import json
import random

import pytest

from inference.sampling_params import StructuredKind
from inference.tools.calls import ToolError, ToolPlan, forced_constraint, tool_plan
from inference.tools.stream import Arguments, CallStart, Content, Event, ToolCallStream

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def plan(mode: str = "auto", parser: str = "hermes", **kwargs: object) -> ToolPlan:
    choice: object = mode if mode != "function" else {"type": "function", "function": {"name": "get_weather"}}
    made = tool_plan([WEATHER, TIME], choice, parallel=kwargs.get("parallel", True), parser=parser)  # type: ignore[arg-type]
    assert made is not None
    return made


def pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 12)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def streamed(reader_plan: ToolPlan, text: str, seed: int) -> tuple[ToolCallStream, list[Event]]:
    reader = ToolCallStream(reader_plan, call_id="call_x")
    events = [event for piece in pieces(text, seed) for event in reader.feed(piece)] + reader.finish()
    return reader, events


def rebuilt(events: list[Event]) -> tuple[str, list[tuple[str, str, str]]]:
    """What a client accumulating OpenAI deltas ends up with."""
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, CallStart):
            calls[event.index] = [event.id, event.name, ""]
        elif isinstance(event, Arguments):
            calls[event.index][2] += event.text
    return content, [tuple(call) for call in calls.values()]  # type: ignore[misc]


HERMES = (
    'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris <3"}}</tool_call>\n'
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
)


@pytest.mark.parametrize("seed", range(6))
def test_hermes_calls_whole_or_streamed(seed: int) -> None:
    whole = ToolCallStream(plan(), call_id="call_x")
    whole.read_all(HERMES)
    _, events = streamed(plan(), HERMES, seed)
    content, calls = rebuilt(events)
    expected = [("call_x_0", "get_weather", '{"city": "Paris <3"}'), ("call_x_1", "get_time", "{}")]
    assert calls == expected
    assert [(c.id, c.name, c.arguments) for c in whole.calls] == expected
    assert content.strip() == "Let me check." == whole.content.strip()


def test_text_that_only_looks_like_a_call_stays_text() -> None:
    text = "I would write <tool_call>not json</tool_call> and a <tool_c"
    _, events = streamed(plan(), text, 1)
    content, calls = rebuilt(events)
    assert calls == [] and content == text


def test_one_call_when_calls_may_not_be_parallel() -> None:
    reader = ToolCallStream(plan(parallel=False), call_id="c")
    reader.read_all(HERMES)
    assert [c.name for c in reader.calls] == ["get_weather"]


def test_llama3_json_calls() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {}}'
    _, events = streamed(plan(parser="llama3_json"), text, 3)
    assert rebuilt(events)[1] == [
        ("call_x_0", "get_weather", '{"city": "Oslo"}'),
        ("call_x_1", "get_time", "{}"),
    ]
    _, events = streamed(plan(parser="llama3_json"), "  Plain words.", 3)
    assert rebuilt(events) == ("  Plain words.", [])


def test_forced_calls_are_constrained_and_read_back() -> None:
    named = plan("function")
    constraint = forced_constraint(named)
    assert constraint is not None and constraint.kind is StructuredKind.JSON_SCHEMA
    assert json.loads(constraint.value) == WEATHER["function"]["parameters"]  # type: ignore[index]
    _, events = streamed(named, '{"city": "Rome"}', 2)
    assert rebuilt(events) == ("", [("call_x_0", "get_weather", '{"city": "Rome"}')])

    required = plan("required", parallel=False)
    schema = json.loads(forced_constraint(required).value)  # type: ignore[union-attr]
    assert schema["maxItems"] == 1 and len(schema["items"]["anyOf"]) == 2
    text = '[{"name": "get_time", "parameters": {"zone": "a]b{"}}]'
    _, events = streamed(plan("required"), text, 5)
    assert rebuilt(events)[1] == [("call_x_0", "get_time", '{"zone": "a]b{"}')]


def test_none_and_parserless_auto_read_text_only() -> None:
    assert not plan("none").active and not plan("none").rendered
    reader = ToolCallStream(plan(parser="none"), call_id="c")
    assert rebuilt(reader.read_all(HERMES)) == (HERMES, [])


def test_bad_tool_requests_name_the_parameter() -> None:
    with pytest.raises(ToolError) as bad:
        tool_plan([{"type": "retrieval"}], "auto", parallel=None, parser="hermes")
    assert bad.value.param == "tools[0]"
    with pytest.raises(ToolError) as unknown:
        tool_plan(
            [WEATHER], {"type": "function", "function": {"name": "nope"}}, parallel=None, parser="hermes"
        )
    assert unknown.value.param == "tool_choice"
    with pytest.raises(ToolError):
        tool_plan([WEATHER, WEATHER], "auto", parallel=None, parser="hermes")
    assert tool_plan(None, "auto", parallel=None, parser="hermes") is None
    # huggingface_hub leaves out "type" in a named choice; the Responses API puts the name on top.
    named = tool_plan([WEATHER], {"function": {"name": "get_weather"}}, parallel=None, parser="hermes")
    assert named is not None and named.mode == "function"
    flat = tool_plan([WEATHER], {"type": "function", "name": "get_weather"}, parallel=None, parser="hermes")
    assert flat is not None and flat.name == "get_weather"
