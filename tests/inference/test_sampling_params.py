"""The one `SamplingParams`: what the job row stores is what the engine reads back."""

from __future__ import annotations

import json

from inference.sampling_params import SamplingParams, StructuredKind, StructuredOutput


def test_every_field_survives_the_job_row() -> None:
    params = SamplingParams(
        max_tokens=40,
        min_tokens=3,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        min_p=0.05,
        typical_p=0.8,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        repetition_penalty=1.3,
        logit_bias=((5, -100.0), (17, 2.5)),
        stop=("\n\n",),
        stop_token_ids=(4, 9),
        include_stop=True,
        ignore_eos=True,
        top_logprobs=3,
        prompt_logprobs=2,
        truncate=100,
        structured=StructuredOutput.json_schema({"type": "object"}),
        output_guards=({"kind": "pii"},),
        choice=2,
    )
    stored = json.loads(json.dumps(params.as_dict()))  # through JSON, as Postgres keeps it
    assert SamplingParams.from_dict(stored) == params
    assert stored["logit_bias"] == {"5": -100.0, "17": 2.5}  # OpenAI's own JSON form


def test_a_plain_request_keeps_the_rows_old_shape() -> None:
    """Fields at their default are not written: the result-cache keys of plain requests made
    before these fields existed still match."""
    assert SamplingParams(max_tokens=8, temperature=0.0).as_dict() == {
        "max_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "seed": None,
        "stop": [],
        "ignore_eos": False,
    }


def test_rows_written_before_prompt_logprobs_counted_alternatives() -> None:
    assert SamplingParams.from_dict({"max_tokens": 2, "prompt_logprobs": True}).prompt_logprobs == 0
    assert SamplingParams.from_dict({"max_tokens": 2, "prompt_logprobs": False}).prompt_logprobs is None


def test_a_schema_keeps_its_property_order() -> None:
    """Properties are generated in the order the schema lists them (as OpenAI does)."""
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "string"}}}
    structured = StructuredOutput.json_schema(schema)
    assert structured.kind is StructuredKind.JSON_SCHEMA
    assert list(json.loads(structured.value)["properties"]) == ["b", "a"]


def test_greedy_and_processed() -> None:
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    assert not SamplingParams().processed
    assert SamplingParams(repetition_penalty=1.1).processed and SamplingParams(min_tokens=1).processed
    assert SamplingParams(logit_bias=((1, 1.0),)).processed
    assert SamplingParams().max_new_tokens == 16 and SamplingParams(max_tokens=3).max_new_tokens == 3
