"""Structured outputs through a live server with unchanged clients: the openai SDK's
``chat.completions.parse`` and ``response_format``, vLLM's ``structured_outputs`` and
``guided_*``, huggingface_hub's ``response_format`` and text_generation's ``grammar``. The tiny
demo model writes gibberish on its own; under a constraint its output is valid every time."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import openai
import pytest
from huggingface_hub import InferenceClient
from pydantic import BaseModel, Field
from text_generation import Client as TgiClient
from text_generation.types import Grammar, GrammarType

from inference.models import Job
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

ASK: list[Any] = [{"role": "user", "content": "Describe a river as JSON."}]


class River(BaseModel):
    name: str = Field(max_length=12)
    length_km: int = Field(ge=0, le=9999)
    kind: Literal["stream", "river", "creek"]


@pytest.fixture
def client(live: Live, api_user: ApiUser) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0, timeout=120)


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in range(3):
        completion = client.chat.completions.parse(
            model=TEST_MODEL_NAME,
            messages=ASK,
            response_format=River,
            max_tokens=120,
            temperature=1.0,
            seed=seed,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        river = choice.message.parsed
        assert isinstance(river, River), choice.message.content
        assert River.model_validate_json(choice.message.content or "") == river


def test_json_schema_streamed_matches_the_schema(client: openai.OpenAI) -> None:
    # additionalProperties false, as OpenAI's strict mode requires (else extra keys are valid).
    schema = {**River.model_json_schema(), "additionalProperties": False}
    stream = client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=ASK,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "river", "schema": schema, "strict": True},
        },
        max_tokens=120,
        stream=True,
        seed=11,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed, not at once
    assert chunks[-1].choices[0].finish_reason == "stop", text
    river = River.model_validate_json(text)
    assert list(json.loads(text)) == ["name", "length_km", "kind"]  # the schema's order
    assert river.kind in ("stream", "river", "creek")


def test_json_object_mode(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=ASK, response_format={"type": "json_object"}, max_tokens=200, seed=3
    )
    choice = completion.choices[0]
    text = choice.message.content or ""
    assert text.startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_vllm_choice_regex_and_structured_outputs(client: openai.OpenAI) -> None:
    choices = ["yes", "no", "maybe later"]
    for seed in range(3):
        picked = client.chat.completions.create(
            model=TEST_MODEL_NAME,
            messages=ASK,
            max_tokens=10,
            seed=seed,
            extra_body={"guided_choice": choices},
        )
        assert picked.choices[0].message.content in choices
    regex = r"[A-Z][a-z]{2,6} [0-9]{3}"
    matched = client.completions.create(
        model=TEST_MODEL_NAME, prompt="Code:", max_tokens=20, seed=1, extra_body={"guided_regex": regex}
    )
    assert re.fullmatch(regex, matched.choices[0].text), matched.choices[0].text
    newer = client.completions.create(
        model=TEST_MODEL_NAME,
        prompt="Answer:",
        max_tokens=20,
        seed=2,
        extra_body={"structured_outputs": {"choice": ["alpha", "beta"]}},
    )
    assert newer.choices[0].text in ("alpha", "beta")
    grammar = client.completions.create(
        model=TEST_MODEL_NAME,
        prompt="Sum:",
        max_tokens=20,
        seed=4,
        extra_body={"structured_outputs": {"grammar": 'start: NUM "+" NUM\nNUM: /[1-9][0-9]?/'}},
    )
    assert re.fullmatch(r"[1-9][0-9]?\+[1-9][0-9]?", grammar.choices[0].text), grammar.choices[0].text


def test_the_constraint_is_part_of_the_result_cache_key(client: openai.OpenAI, api_user: ApiUser) -> None:
    """A greedy request is cached; the same request with a constraint must not get the cached
    free text (nor the other way round)."""
    free = client.completions.create(model=TEST_MODEL_NAME, prompt="Name:", max_tokens=8, temperature=0)
    constrained, again = (
        client.completions.create(
            model=TEST_MODEL_NAME,
            prompt="Name:",
            max_tokens=8,
            temperature=0,
            extra_body={"guided_choice": ["Ann", "Bo"]},
        )
        for _ in range(2)
    )
    assert (
        constrained.choices[0].text in ("Ann", "Bo") and again.choices[0].text == constrained.choices[0].text
    )
    assert Job.objects.get(id=again.id.removeprefix("cmpl-")).cache_hit
    assert free.choices[0].text not in ("Ann", "Bo") or free.choices[0].text == constrained.choices[0].text


def test_huggingface_hub_response_format(live: Live, api_user: ApiUser) -> None:
    client = InferenceClient(base_url=f"{live.base_url}/v1", api_key=api_user.key)
    output = client.chat_completion(  # type: ignore[call-overload]
        messages=ASK,
        max_tokens=120,
        seed=5,
        response_format={
            "type": "json_schema",
            # additionalProperties false: else a key of gibberish after "kind" is valid JSON.
            "json_schema": {
                "name": "river",
                "schema": {**River.model_json_schema(), "additionalProperties": False},
            },
        },
    )
    assert output.choices[0].finish_reason == "stop", output.choices[0].message.content
    River.model_validate_json(output.choices[0].message.content)


def test_text_generation_grammar(live: Live, api_user: ApiUser) -> None:
    client = TgiClient(live.base_url, headers=api_user.headers, timeout=120)
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response = client.generate(
        "Status:", max_new_tokens=30, grammar=Grammar(type=GrammarType.Json, value=schema)
    )
    assert json.loads(response.generated_text) in ({"ok": True}, {"ok": False})
    regex = client.generate(
        "Year:", max_new_tokens=10, grammar=Grammar(type=GrammarType.Regex, value="(19|20)[0-9]{2}")
    )
    assert re.fullmatch(r"(19|20)[0-9]{2}", regex.generated_text), regex.generated_text
    tokens = [
        e.token.text
        for e in client.generate_stream(
            "Status:", max_new_tokens=30, grammar=Grammar(type=GrammarType.Json, value=schema)
        )
    ]
    assert json.loads("".join(tokens)) in ({"ok": True}, {"ok": False})
