"""The shared prepare step, called directly: input rules (storable text, sizes, the context
window, the vocabulary), message normalization, parallel choices and what a prepared request
carries, on the tiny demo model's real tokenizer and chat template (no server, no worker)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from gateway.errors import ApiError
from gateway.guards import RequestGuards
from gateway.prepare import (
    ChatContext,
    PreparedRequest,
    check_stop,
    check_storable,
    normalize_messages,
    prepare_chat,
    prepare_completion,
    resolve_chat_context,
    route_or_404,
    with_choices,
    with_extra,
    with_input,
)
from inference.guards import PiiRedactor
from inference.sampling_params import SamplingParams
from inference.tools.calls import ToolPlan
from inference.versions.registry import ServedModel
from tests.conftest import TEST_MODEL_NAME

#: A small window, so that the context checks are reached with short prompts.
CONTEXT = 64
HELLO = "Hello world"  # five tokens of the demo tokenizer, no BOS


@pytest.fixture
def model(demo_model_dir: Path) -> ServedModel:
    return ServedModel(name=TEST_MODEL_NAME, path=demo_model_dir, context_length=CONTEXT)


def refusal(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as refused:
        call(*args, **kwargs)
    return refused.value


def test_text_postgres_cannot_store_is_refused_naming_the_character_and_its_place() -> None:
    check_storable("plain text, é and 😀", param="prompt")  # storable: no error
    nul = refusal(check_storable, "a\x00b", param="prompt")
    assert (nul.status_code, nul.error_code, nul.param) == (400, "invalid_value", "prompt")
    assert nul.message == "The text contains a NUL character (\\u0000), which is not allowed."
    surrogate = refusal(check_storable, "x\udc80", param="messages[0].content", error_status=422)
    assert (surrogate.status_code, surrogate.param) == (422, "messages[0].content")
    assert "a lone surrogate (\\udc80)" in surrogate.message
    # One stop string is named as the field; one of several by its index.
    assert refusal(check_stop, ["\x00"]).param == "stop"
    assert refusal(check_stop, ["ok", "\ud800"], param="stop_sequences").param == "stop_sequences[1]"


def test_messages_are_normalized_into_what_the_chat_template_reads() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi "}, {"type": "input_text", "text": "there"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    assert normalize_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    image = [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url"}]}]
    refused = refusal(normalize_messages, image, param="input")
    assert (refused.error_code, refused.param) == ("unsupported_content", "input[1].content")
    assert "'image_url'" in refused.message


def test_parallel_choices_share_a_group_and_step_the_seed(model: ServedModel) -> None:
    prepared = PreparedRequest(
        model=model,
        kind="completion",
        input={"prompt": HELLO},
        params=SamplingParams(max_tokens=8, seed=2**63 - 1),
        prompt_tokens=5,
        extra={"store": True},
    )
    assert with_choices(prepared, 1) == [prepared]
    choices = with_choices(prepared, 3)
    assert [c.params.choice for c in choices] == [0, 1, 2]
    assert [c.params.seed for c in choices] == [2**63 - 1, 0, 1]  # wraps within 63 bits
    groups = {c.extra["group"] for c in choices}
    assert len(groups) == 1 and all(c.extra["store"] is True for c in choices)
    # Admission reserves the shared prompt once: later choices cost their own tokens only.
    assert [c.cost for c in choices] == [5 + 8, 8, 8]
    unseeded = PreparedRequest(model, "completion", {}, SamplingParams(), 3)
    assert [c.params.seed for c in with_choices(unseeded, 2)] == [None, None]
    assert with_extra(prepared, store=False).extra == {"store": False}
    assert with_input(prepared, return_token_ids=True).input == {"prompt": HELLO, "return_token_ids": True}
    assert prepared.input == {"prompt": HELLO}  # the original is left as it was


def test_a_text_prompt_is_tokenized_and_max_tokens_fills_the_room_left(model: ServedModel) -> None:
    prepared = prepare_completion(
        model=model, prompt=HELLO, sampling=SamplingParams(stop=("\n",)), default_max_tokens=500
    )
    ids = model.info.completion_prompt_ids(HELLO)
    assert (prepared.kind, prepared.input) == ("completion", {"prompt": HELLO})
    assert prepared.prompt_ids == tuple(ids) and prepared.prompt_tokens == len(ids) == 5
    assert prepared.params.max_tokens == CONTEXT - 5  # the default, capped by the window
    assert prepared.params.stop == ("\n",) and prepared.params.output_guards == ()
    small = prepare_completion(model=model, prompt=HELLO, sampling=SamplingParams(), default_max_tokens=7)
    assert small.params.max_tokens == 7


def test_a_token_id_prompt_is_checked_against_the_vocabulary_and_truncated(model: ServedModel) -> None:
    outside = refusal(
        prepare_completion, model=model, prompt=[5, 1024], sampling=SamplingParams(), default_max_tokens=4
    )
    assert (outside.error_code, outside.param) == ("invalid_value", "prompt")
    assert outside.message == "Token id 1024 is outside this model's vocabulary (0..1023)."
    empty = refusal(
        prepare_completion, model=model, prompt=[], sampling=SamplingParams(), default_max_tokens=4
    )
    assert empty.error_code == "empty_prompt"
    blank = refusal(
        prepare_completion, model=model, prompt="  \n", sampling=SamplingParams(), default_max_tokens=4
    )
    assert blank.error_code == "empty_prompt"
    kept = prepare_completion(
        model=model, prompt=[7, 8, 9, 10], sampling=SamplingParams(truncate=2), default_max_tokens=4
    )
    assert kept.prompt_ids == (9, 10) and kept.prompt_tokens == 2
    assert kept.input == {"prompt_ids": [7, 8, 9, 10]}


@pytest.mark.parametrize(
    ("sampling", "code", "param"),
    [
        (SamplingParams(max_tokens=5000), "invalid_value", "max_tokens"),  # above SLUICE_MAX_NEW_TOKENS
        (SamplingParams(max_tokens=CONTEXT - 4), "context_length_exceeded", "max_tokens"),
        (SamplingParams(top_logprobs=21), "invalid_value", "top_logprobs"),
        (SamplingParams(max_tokens=5, min_tokens=6), "invalid_value", "min_tokens"),
        (SamplingParams(logit_bias=((1024, 5.0),)), "invalid_value", "logit_bias"),
        (SamplingParams(stop_token_ids=(-1,)), "invalid_value", "stop_token_ids"),
        (SamplingParams(allowed_token_ids=(3, 4096)), "invalid_value", "allowed_token_ids"),
        (SamplingParams(stop=("ok", "\x00")), "invalid_value", "stop[1]"),
    ],
)
def test_each_bad_parameter_is_refused_by_name_with_the_routes_status(
    model: ServedModel, sampling: SamplingParams, code: str, param: str
) -> None:
    refused = refusal(
        prepare_completion,
        model=model,
        prompt=HELLO,
        sampling=sampling,
        default_max_tokens=8,
        error_status=422,  # TGI's status for a bad value: every refusal here keeps it
    )
    assert (refused.status_code, refused.error_code, refused.param) == (422, code, param)


def test_the_context_window_and_the_prompt_size_limit(model: ServedModel, settings: Any) -> None:
    exactly = prepare_completion(
        model=model, prompt=HELLO, sampling=SamplingParams(max_tokens=CONTEXT - 5), default_max_tokens=8
    )
    assert exactly.params.max_tokens == CONTEXT - 5  # prompt + max_tokens == the window: allowed
    full = ServedModel(name=TEST_MODEL_NAME, path=model.path, context_length=5)
    refused = refusal(
        prepare_completion, model=full, prompt=HELLO, sampling=SamplingParams(), default_max_tokens=8
    )
    assert (refused.error_code, refused.param) == ("context_length_exceeded", "prompt")
    assert (
        "maximum context length is 5 tokens" in refused.message
        and "your prompt has 5 tokens" in refused.message
    )
    settings.SLUICE_MAX_PROMPT_CHARS = 10
    too_long = refusal(
        prepare_completion, model=model, prompt=HELLO, sampling=SamplingParams(), default_max_tokens=8
    )
    assert (too_long.error_code, too_long.param) == ("prompt_too_long", "prompt")
    assert "(11 characters; the limit is 10)" in too_long.message


def test_a_parameter_the_upstream_lacks_is_refused_under_the_protocols_name(model: ServedModel) -> None:
    tgi = ServedModel(name=TEST_MODEL_NAME, path=model.path, context_length=CONTEXT, backend="tgi")
    sampling = SamplingParams(presence_penalty=0.5)
    refused = refusal(
        prepare_completion,
        model=tgi,
        prompt=HELLO,
        sampling=sampling,
        default_max_tokens=8,
        param_names={"presence_penalty": "presencePenalty"},
    )
    assert (refused.error_code, refused.param) == ("unsupported_parameter", "presencePenalty")
    assert refused.message.startswith("'presencePenalty' is not supported by this model's upstream: ")
    local = prepare_completion(model=model, prompt=HELLO, sampling=sampling, default_max_tokens=8)
    assert local.params.presence_penalty == 0.5  # the local backend honours it


def test_a_chat_is_rendered_with_the_template_and_carries_its_context(model: ServedModel) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    context = ChatContext(session_id="s-1", knowledge_base_ids=("kb-1",), rag={"top_k": 2})
    prepared = prepare_chat(
        model=model, messages=messages, sampling=SamplingParams(max_tokens=4), context=context, extra={"x": 1}
    )
    normalized = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = model.info.chat_prompt_ids(normalized)
    assert prepared.prompt_ids == tuple(ids) and prepared.prompt_tokens == len(ids)
    assert prepared.kind == "chat" and prepared.session_id == "s-1" and prepared.extra == {"x": 1}
    assert prepared.input == {"messages": normalized, "knowledge_base_ids": ["kb-1"], "rag": {"top_k": 2}}
    # The history a Responses chain continues is counted, not stored in this job's input.
    history = [{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes"}]
    chained = prepare_chat(
        model=model, messages=messages, sampling=SamplingParams(max_tokens=4), history=history
    )
    assert chained.prompt_ids == tuple(model.info.chat_prompt_ids([*history, *normalized]))
    assert chained.input == {"messages": normalized} and chained.session_id is None


def test_a_chat_without_text_is_refused_but_a_tool_call_turn_counts(model: ServedModel) -> None:
    empty = refusal(
        prepare_chat,
        model=model,
        messages=[
            {"role": "user", "content": " "},
            {"role": "user", "content": [{"type": "text", "text": ""}]},
        ],
        sampling=SamplingParams(),
        messages_param="input",
    )
    assert (empty.status_code, empty.error_code, empty.param) == (400, "empty_prompt", "input")
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    prepared = prepare_chat(
        model=model,
        messages=[{"role": "assistant", "content": "", "tool_calls": [call]}],
        sampling=SamplingParams(),
    )
    assert prepared.input["messages"][0]["tool_calls"][0]["function"]["arguments"] == {}
    nul = refusal(
        prepare_chat,
        model=model,
        messages=[{"role": "user", "content": "ok"}, {"role": "user", "content": "a\x00"}],
        sampling=SamplingParams(),
    )
    assert nul.param == "messages[1].content"


def test_input_guards_see_the_callers_turns_and_output_guards_ride_with_the_params(
    model: ServedModel,
) -> None:
    guards = RequestGuards(policy="p", input=[PiiRedactor()], output=[{"kind": "pii"}])
    prepared = prepare_chat(
        model=model,
        messages=[
            {"role": "user", "content": "Mail me at ann@example.com"},
            {"role": "assistant", "content": "Sure, bob@example.com"},  # the model's own turn passes
        ],
        sampling=SamplingParams(max_tokens=4),
        guards=guards,
    )
    assert [m["content"] for m in prepared.input["messages"]] == [
        "Mail me at [REDACTED:email]",
        "Sure, bob@example.com",
    ]
    assert prepared.params.output_guards == ({"kind": "pii"},)


def test_tools_are_rendered_into_the_prompt_unless_the_choice_is_none(demo_model_dir: Path) -> None:
    model = ServedModel(name=TEST_MODEL_NAME, path=demo_model_dir)  # the tools' text needs room
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    messages = [{"role": "user", "content": "Weather?"}]
    plain = prepare_chat(model=model, messages=messages, sampling=SamplingParams(max_tokens=4))
    auto = ToolPlan(tools=(tool,), mode="auto")
    with_tools = prepare_chat(
        model=model, messages=messages, sampling=SamplingParams(max_tokens=4), tools=auto
    )
    assert with_tools.input["tool_plan"] == auto.as_dict()
    assert with_tools.prompt_ids == tuple(model.info.chat_prompt_ids(messages, tools=[tool]))
    assert with_tools.prompt_tokens > plain.prompt_tokens
    none = ToolPlan(tools=(tool,), mode="none")
    unrendered = prepare_chat(
        model=model, messages=messages, sampling=SamplingParams(max_tokens=4), tools=none
    )
    assert unrendered.prompt_ids == plain.prompt_ids and unrendered.input["tool_plan"]["mode"] == "none"


def test_sessions_knowledge_bases_and_models_not_the_callers_are_404(db: None) -> None:
    user = User.objects.create(username="prepare-404")
    assert resolve_chat_context(user=user, data={}) == ChatContext()
    session = refusal(resolve_chat_context, user=user, data={"session_id": str(uuid.uuid4())})
    assert (session.status_code, session.error_code, session.param) == (
        404,
        "session_not_found",
        "session_id",
    )
    missing = str(uuid.uuid4())
    kb = refusal(resolve_chat_context, user=user, data={"knowledge_base_ids": [missing]})
    assert (kb.status_code, kb.error_code, kb.param) == (
        404,
        "knowledge_base_not_found",
        "knowledge_base_ids",
    )
    assert kb.message == f"No knowledge base with id '{missing}'."
    unknown = refusal(route_or_404, "no-such-model", user=user, validation_status=422)
    assert (unknown.status_code, unknown.error_code, unknown.param) == (422, "model_not_found", "model")
