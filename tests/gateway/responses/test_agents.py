"""An agent framework nobody here wrote, unchanged, running its tool loop against a live Sluice,
offline: the openai Agents SDK (its default model speaks the Responses API; the chat
completions model too). The first turn must call a tool (``tool_choice="required"``; the SDK
resets it to auto afterwards, as it does by default), the SDK runs the tool, sends its output
back, and the next turn answers."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from channels.db import database_sync_to_async
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

from inference.models import Job
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

set_tracing_disabled(True)  # nothing leaves the machine


class Answer(BaseModel):
    """The agent's final output (a structured output: the tiny model's free text would not end)."""

    summary: str = Field(max_length=16)
    sunny: bool


def _agent(model: Any, calls: list[tuple[str, dict[str, Any]]]) -> Agent[Any]:
    # Literal arguments: an enum in the tool's schema, so the tiny model's calls are short.
    @function_tool
    def get_weather(city: Literal["Paris", "Oslo", "Lima"]) -> str:
        """Weather."""
        calls.append(("get_weather", {"city": city}))
        return "sunny, 21 C"

    @function_tool
    def get_time(zone: Literal["UTC", "CET"]) -> str:
        """Time."""
        calls.append(("get_time", {"zone": zone}))
        return "12:00"

    return Agent(
        name="assistant",
        instructions="Be brief.",
        tools=[get_weather, get_time],
        model=model,
        output_type=Answer,
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, max_tokens=80, temperature=0.7
        ),
    )


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_an_agent_loop_with_two_tools(live: Live, api_user: ApiUser, api: str) -> None:
    client = AsyncOpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0, timeout=120)
    model = (
        OpenAIResponsesModel(model=TEST_MODEL_NAME, openai_client=client)
        if api == "responses"
        else OpenAIChatCompletionsModel(model=TEST_MODEL_NAME, openai_client=client)
    )
    calls: list[tuple[str, dict[str, Any]]] = []
    result = await Runner.run(_agent(model, calls), "Weather in Paris?", max_turns=6)
    assert calls, "the agent ran no tool"
    assert all(name in ("get_weather", "get_time") for name, _ in calls)
    assert isinstance(result.final_output, Answer)
    # The tool's output went back to the model: the last turn's prompt carries it.
    jobs = await database_sync_to_async(
        lambda: list(Job.objects.filter(user=api_user.user).order_by("queued_at"))
    )()
    assert len(jobs) >= 2
    tool_output = "sunny, 21 C" if calls[0][0] == "get_weather" else "12:00"
    assert f"<tool_response>{tool_output}</tool_response>" in jobs[-1].rendered_prompt
    await client.close()
