"""No silent ignore: every parameter today's clients send is honoured or refused by name.

The lists come from the clients' and peers' own definitions: the openai SDK's request types
(read from the installed package), vLLM's documented extensions to the OpenAI API and TGI's
openapi.json (copied below from their sources: neither is installed here). Each one is in the
protocol's table (the README's, generated from the same declarations); each refused one, sent
with a value that would change the answer, is a 400 naming it; each honoured one is answered;
a name nobody defines is a 400 naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import response_create_params

from gateway.openai.serializers import ChatCompletionSerializer, CompletionSerializer
from gateway.parameter_tables import END, START, markdown
from gateway.parameters import declared
from gateway.responses.serializers import REFUSED as RESPONSES_REFUSED
from gateway.responses.serializers import ResponseCreateSerializer
from gateway.tgi.serializers import REFUSED as TGI_REFUSED
from gateway.tgi.serializers import TgiParametersSerializer
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

# vLLM's extra parameters of ChatCompletionRequest and CompletionRequest
# (vllm/entrypoints/openai/protocol.py, the "*-sampling-params" and "*-extra-params" blocks,
# v0.10-v0.11, and the names later versions added: structured_outputs, return_token_ids): the
# ones both requests take, then what each adds.
VLLM_SAMPLING = [
    "use_beam_search",
    "top_k",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "prompt_logprobs",
    "allowed_token_ids",
    "add_special_tokens",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "priority",
    "request_id",
    "logits_processors",
    "return_tokens_as_token_ids",
    "cache_salt",
    "kv_transfer_params",
    "vllm_xargs",
    "structured_outputs",
    "return_token_ids",
]
VLLM_CHAT = [
    *VLLM_SAMPLING,
    "best_of",
    "bad_words",
    "echo",
    "add_generation_prompt",
    "continue_final_message",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "mm_processor_kwargs",
    "structural_tag",
    "include_reasoning",
]
# CompletionRequest's ("completion-sampling-params" and "completion-extra-params").
VLLM_COMPLETIONS = [*VLLM_SAMPLING, "response_format", "prompt_embeds"]
# TGI's openapi.json: GenerateParameters, and ChatRequest (its /v1/chat/completions).
TGI_GENERATE = [
    "adapter_id",
    "best_of",
    "decoder_input_details",
    "details",
    "do_sample",
    "frequency_penalty",
    "grammar",
    "max_new_tokens",
    "repetition_penalty",
    "return_full_text",
    "seed",
    "stop",
    "temperature",
    "top_k",
    "top_n_tokens",
    "top_p",
    "truncate",
    "typical_p",
    "watermark",
]
TGI_CHAT = [
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "messages",
    "model",
    "n",
    "presence_penalty",
    "response_format",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tool_prompt",
    "tools",
    "top_logprobs",
    "top_p",
]


def sdk_params(typed: Any) -> set[str]:
    return set(typed.__annotations__)


CHAT = declared(ChatCompletionSerializer, ChatCompletionSerializer.REFUSED)
COMPLETIONS = declared(CompletionSerializer, CompletionSerializer.REFUSED)
RESPONSES = declared(ResponseCreateSerializer, RESPONSES_REFUSED)
TGI = declared(TgiParametersSerializer, TGI_REFUSED)


@pytest.mark.parametrize(
    ("source", "names", "table"),
    [
        ("openai chat", sdk_params(chat_create_params.CompletionCreateParamsBase) | {"stream"}, CHAT),
        (
            "openai completions",
            sdk_params(completion_create_params.CompletionCreateParamsBase) | {"stream"},
            COMPLETIONS,
        ),
        (
            "openai responses",
            sdk_params(response_create_params.ResponseCreateParamsBase) | {"stream"},
            RESPONSES,
        ),
        ("vllm chat", set(VLLM_CHAT), CHAT),
        ("vllm completions", set(VLLM_COMPLETIONS), COMPLETIONS),
        ("tgi generate", set(TGI_GENERATE), TGI),
        ("tgi chat", set(TGI_CHAT), CHAT),
    ],
)
def test_every_parameter_of_the_clients_is_declared(source: str, names: set[str], table: set[str]) -> None:
    assert sorted(names - table) == [], source


def test_the_readme_table_is_the_code() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start, end = readme.index(START), readme.index(END) + len(END)
    assert readme[start:end] == markdown(), "run `python manage.py parameters` and paste its output"


#: A value that would change the answer, for each refused parameter.
CHANGING: dict[str, Any] = {
    "use_beam_search": True, "length_penalty": 0.5, "skip_special_tokens": False,
    "spaces_between_special_tokens": False, "bad_words": ["x"], "structural_tag": "{}",
    "guided_decoding_backend": "xgrammar", "guided_whitespace_pattern": " *", "priority": 5,
    "logits_processors": ["os.system"], "cache_salt": "salt", "kv_transfer_params": {"a": 1},
    "vllm_xargs": {"a": 1}, "mm_processor_kwargs": {"a": 1}, "prompt_embeds": "AAAA",
    "service_tier": "flex", "store": True, "prompt_cache_key": "k", "prompt_cache_retention": "24h",
    "prompt_cache_options": {"a": 1}, "moderation": {"a": 1}, "audio": {"voice": "x"},
    "modalities": ["text", "audio"], "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "high", "verbosity": "low", "web_search_options": {}, "functions": [{"name": "f"}],
    "function_call": "auto", "echo": True, "add_generation_prompt": False, "continue_final_message": True,
    "add_special_tokens": True, "documents": [{"text": "x"}], "chat_template": "{{ x }}",
    "chat_template_kwargs": {"a": 1}, "tool_prompt": "x", "include_reasoning": "yes", "suffix": "x",
}  # fmt: skip


def refused_cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    chat = {"model": TEST_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    completion = {"model": TEST_MODEL_NAME, "prompt": "Hi", "max_tokens": 1}
    for path, refused, body in (
        ("/v1/chat/completions", ChatCompletionSerializer.REFUSED, chat),
        ("/v1/completions", CompletionSerializer.REFUSED, completion),
    ):
        for name in refused:
            value = CHANGING[name]
            if name == "add_special_tokens" and path == "/v1/completions":
                value = False
            cases.append((path, name, {**body, name: value}))
    return cases


def test_refused_parameters_are_named_neutral_ones_accepted(live: Live, api_user: ApiUser) -> None:
    with httpx.Client(base_url=live.base_url, headers=api_user.headers, timeout=60) as http:
        for path, name, body in refused_cases():
            response = http.post(path, json=body)
            assert response.status_code == 400, (path, name, response.text)
            error = response.json()["error"]
            assert error["param"] == name and error["code"] == "unsupported_parameter", (path, name, error)
            assert name in error["message"]
        # Their neutral values, sent explicitly as clients do: answered.
        neutral = {"use_beam_search": False, "skip_special_tokens": True, "priority": 0, "echo": False}
        ok = http.post(
            "/v1/chat/completions",
            json={
                "model": TEST_MODEL_NAME,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
                **neutral,
            },
        )
        assert ok.status_code == 200, ok.text
        unknown = http.post("/v1/completions", json={"model": TEST_MODEL_NAME, "prompt": "x", "max_token": 3})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "max_token"
        responses = http.post(
            "/v1/responses", json={"model": TEST_MODEL_NAME, "input": "x", "reasoning": {"effort": "high"}}
        )
        assert responses.status_code == 400 and responses.json()["error"]["param"] == "reasoning"
        tgi = http.post("/generate", json={"inputs": "x", "parameters": {"watermark": True}})
        assert tgi.status_code == 422 and "watermark" in tgi.json()["error"]
        jobs = http.post("/api/v1/jobs", json={"prompt": "x", "max_tokens": 1, "beam_width": 4})
        assert jobs.status_code == 400 and jobs.json()["error"]["param"] == "beam_width"


#: A value for each honoured parameter (with what it needs beside it).
HONOURED: dict[str, dict[str, Any]] = {
    "temperature": {"temperature": 0.5}, "top_p": {"top_p": 0.9}, "top_k": {"top_k": 5}, "min_p": {"min_p": 0.1},
    "seed": {"seed": 3}, "stop": {"stop": ["\n"]}, "n": {"n": 2}, "best_of": {"best_of": 2},
    "stream": {"stream": True}, "stream_options": {"stream": True, "stream_options": {"include_usage": True}},
    "user": {"user": "u1"}, "safety_identifier": {"safety_identifier": "s1"}, "metadata": {"metadata": {"a": "b"}},
    "presence_penalty": {"presence_penalty": 0.5}, "frequency_penalty": {"frequency_penalty": 0.5},
    "logit_bias": {"logit_bias": {"5": 1}}, "repetition_penalty": {"repetition_penalty": 1.2},
    "min_tokens": {"min_tokens": 1}, "stop_token_ids": {"stop_token_ids": [5]},
    "allowed_token_ids": {"allowed_token_ids": [5, 6]}, "include_stop_str_in_output": {"include_stop_str_in_output": True},
    "ignore_eos": {"ignore_eos": True}, "truncate_prompt_tokens": {"truncate_prompt_tokens": 3},
    "prompt_logprobs": {"prompt_logprobs": 1}, "return_tokens_as_token_ids": {"return_tokens_as_token_ids": True},
    "return_token_ids": {"return_token_ids": True}, "request_id": {"request_id": "r-1"},
    "structured_outputs": {"structured_outputs": {"choice": ["a"]}}, "guided_json": {"guided_json": {"type": "boolean"}},
    "guided_regex": {"guided_regex": "[ab]"}, "guided_choice": {"guided_choice": ["a"]},
    "guided_grammar": {"guided_grammar": 'start: "a"'}, "response_format": {"response_format": {"type": "json_object"}},
    "max_tokens": {"max_tokens": 2}, "max_completion_tokens": {"max_completion_tokens": 2},
    "logprobs": {"logprobs": True}, "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "tools": {"tools": [{"type": "function", "function": {"name": "f"}}]},
    "tool_choice": {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"},
    "parallel_tool_calls": {"parallel_tool_calls": False}, "session_id": {}, "knowledge_base_ids": {},
    "rag": {}, "messages": {}, "model": {}, "echo": {"echo": True}, "prompt": {},
}  # fmt: skip


def test_honoured_parameters_are_answered(live: Live, api_user: ApiUser) -> None:
    with httpx.Client(base_url=live.base_url, headers=api_user.headers, timeout=120) as http:
        for path, table, base in (
            (
                "/v1/chat/completions",
                CHAT - set(ChatCompletionSerializer.REFUSED),
                {"messages": [{"role": "user", "content": "Hi"}]},
            ),
            ("/v1/completions", COMPLETIONS - set(CompletionSerializer.REFUSED), {"prompt": "Hi"}),
        ):
            for name in sorted(table):
                extra = dict(HONOURED[name])
                if path == "/v1/completions" and name == "logprobs":
                    extra = {"logprobs": 1}
                body = {"model": TEST_MODEL_NAME, "max_tokens": 2, **base, **extra}
                response = http.post(path, json=body)
                assert response.status_code == 200, (path, name, response.text[:300])
