"""Request bodies of the OpenAI-compatible routes (strict JSON types, OpenAI's limits)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.conf import settings
from rest_framework import serializers

from gateway import structured
from gateway.fields import (
    AnyJSONField,
    ContextFieldsMixin,
    StopField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from gateway.openai.fields import (
    ChatMessageSerializer,
    LogitBiasField,
    PromptField,
    StreamOptionsSerializer,
    invalid,
    token_list,
)
from gateway.parameters import Refused
from gateway.prepare import MAX_TOP_LOGPROBS
from inference.sampling_params import SamplingParams, StructuredOutput
from inference.tools.calls import ToolPlan, forced_constraint

# Parameters that OpenAI, or vLLM's extensions of its API, define and Sluice does not implement:
# accepted at the values that mean "not used" (clients often send defaults), refused otherwise.
COMMON_REFUSED: dict[str, Refused] = {
    "use_beam_search": Refused("beam search is not implemented", (None, False)),
    "length_penalty": Refused("only beam search uses it", (None, 1, 1.0)),
    "skip_special_tokens": Refused("special tokens are always left out of the text", (None, True)),
    "spaces_between_special_tokens": Refused("special tokens are never in the text", (None, True)),
    "bad_words": Refused(
        "banned word sequences are not implemented (logit_bias bans single tokens)", (None, [])
    ),
    "structural_tag": Refused("structural tags are not implemented"),
    "guided_decoding_backend": Refused(
        "one structured-output engine (llguidance) serves every request",
        (None, "auto", "guidance", "llguidance"),
    ),
    "guided_whitespace_pattern": Refused("a custom JSON whitespace pattern is not implemented"),
    "priority": Refused("priority comes from the caller's rate-limit policy", (None, 0)),
    "logits_processors": Refused("request-supplied code is never run", (None, [])),
    "cache_salt": Refused("prefix-cache salting is not implemented"),
    "kv_transfer_params": Refused("disaggregated serving is not implemented"),
    "vllm_xargs": Refused("custom engine extensions are not implemented", (None, {})),
    "mm_processor_kwargs": Refused("only text models are served", (None, {})),
    "prompt_embeds": Refused("only token prompts are served"),
    "service_tier": Refused("there is one service tier", (None, "auto", "default")),
    "store": Refused("completions are not stored for retrieval (the Responses API stores)", (None, False)),
    "prompt_cache_key": Refused("prefix caching is automatic and keyed by the prompt itself"),
    "prompt_cache_retention": Refused("prefix caching is automatic and keyed by the prompt itself"),
    "prompt_cache_options": Refused("prefix caching is automatic and keyed by the prompt itself"),
    "moderation": Refused("moderation is configured as the caller's output guards"),
}

CHAT_REFUSED: dict[str, Refused] = {
    **COMMON_REFUSED,
    "audio": Refused("only text models are served"),
    "modalities": Refused("only text models are served", (None, ["text"])),
    "prediction": Refused("predicted outputs are not implemented"),
    "reasoning_effort": Refused("no served model reasons"),
    "verbosity": Refused("no served model has a verbosity setting"),
    "web_search_options": Refused("web search is not implemented"),
    "functions": Refused("the legacy function-calling API is not implemented; use 'tools'", (None, [])),
    "function_call": Refused("the legacy function-calling API is not implemented; use 'tool_choice'"),
    "echo": Refused("echoing the last message is not implemented on chat", (None, False)),
    "add_generation_prompt": Refused("the chat template always ends with the assistant's turn", (None, True)),
    "continue_final_message": Refused("continuing the last message is not implemented", (None, False)),
    "add_special_tokens": Refused("the chat template writes every special token", (None, False)),
    "documents": Refused("use knowledge_base_ids: retrieval is Sluice's own", (None, [])),
    "chat_template": Refused("the chat template is the operator's (a request never supplies one)"),
    "chat_template_kwargs": Refused("the chat template takes no request arguments", (None, {})),
    "tool_prompt": Refused("tools are presented by the model's own chat template"),
    "include_reasoning": Refused("no served model reasons", (None, True, False)),
}

COMPLETION_REFUSED: dict[str, Refused] = {
    **COMMON_REFUSED,
    "suffix": Refused("insertion (fill in the middle) is not implemented", (None, "")),
    "add_special_tokens": Refused("a text prompt always gets the tokenizer's special tokens", (None, True)),
}


class SamplingSerializer(serializers.Serializer):
    """Fields shared by chat and text completions (OpenAI's, and vLLM's extensions)."""

    model = StrictCharField(max_length=200)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    # vLLM: -1 (and 0) is "no top-k".
    top_k = StrictIntegerField(required=False, allow_null=True, min_value=-1, max_value=100_000)
    min_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=-(2**63), max_value=2**63 - 1)
    stop = StopField()
    # Parallel sampling: up to SLUICE_MAX_N choices (checked in validate_n: a setting).
    n = StrictIntegerField(required=False, allow_null=True, min_value=1)
    # The best n of this many sequences, by their log-probability (not with a stream).
    best_of = StrictIntegerField(required=False, allow_null=True, min_value=1)
    stream = StrictBooleanField(required=False, default=False, allow_null=True)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    # Recorded with the job (the console, the audit trail), as OpenAI uses them for abuse checks.
    user = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    safety_identifier = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    metadata = serializers.DictField(child=StrictCharField(max_length=512), required=False, allow_null=True)
    presence_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2.0, max_value=2.0)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2.0, max_value=2.0)
    logit_bias = LogitBiasField()
    # vLLM's extensions.
    repetition_penalty = StrictFloatField(required=False, allow_null=True, min_value=0.01, max_value=10.0)
    min_tokens = StrictIntegerField(required=False, allow_null=True, min_value=0)
    stop_token_ids = token_list()
    allowed_token_ids = token_list()
    include_stop_str_in_output = StrictBooleanField(required=False, default=False, allow_null=True)
    # Keep generating past end-of-sequence, up to max_tokens.
    ignore_eos = StrictBooleanField(required=False, default=False, allow_null=True)
    # Keep only the last this many prompt tokens.
    truncate_prompt_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    prompt_logprobs = StrictIntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_TOP_LOGPROBS
    )
    # Log-probabilities name tokens "token_id:<id>" (a gateway in front of this one reads exact
    # ids; Sluice's own openai backend does).
    return_tokens_as_token_ids = StrictBooleanField(required=False, default=False, allow_null=True)
    # The token ids of the prompt and of each choice, beside the text.
    return_token_ids = StrictBooleanField(required=False, default=False, allow_null=True)
    # The job's request id (as X-Request-ID; the header wins).
    request_id = StrictCharField(required=False, allow_null=True, max_length=128)
    # Structured outputs: vLLM's object and its older fields (read by gateway/structured.py).
    structured_outputs = AnyJSONField()
    guided_json = AnyJSONField()
    guided_regex = AnyJSONField()
    guided_choice = AnyJSONField()
    guided_grammar = AnyJSONField()
    response_format = AnyJSONField()

    def validate_n(self, value: int | None) -> int | None:
        if value is not None and value > settings.SLUICE_MAX_N:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {settings.SLUICE_MAX_N} (SLUICE_MAX_N)."
            )
        return value

    def validate_best_of(self, value: int | None) -> int | None:
        return self.validate_n(value)

    def validate_top_p(self, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise serializers.ValidationError("Must be greater than 0.")
        return value

    @staticmethod
    def common_sampling(
        data: dict[str, Any],
        *,
        max_tokens: int | None,
        top_logprobs: int,
        constraint: StructuredOutput | None,
    ) -> SamplingParams:
        def given(name: str, default: Any) -> Any:
            value = data.get(name)
            return default if value is None else value

        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=given("min_tokens", 0),
            temperature=float(given("temperature", 1.0)),
            top_p=float(given("top_p", 1.0)),
            top_k=max(0, given("top_k", 0)),
            min_p=float(given("min_p", 0.0)),
            seed=data.get("seed"),
            presence_penalty=float(given("presence_penalty", 0.0)),
            frequency_penalty=float(given("frequency_penalty", 0.0)),
            repetition_penalty=float(given("repetition_penalty", 1.0)),
            logit_bias=given("logit_bias", ()),
            stop=tuple(data.get("stop") or ()),
            stop_token_ids=tuple(data.get("stop_token_ids") or ()),
            allowed_token_ids=tuple(sorted(set(data.get("allowed_token_ids") or ()))),
            include_stop=bool(data.get("include_stop_str_in_output")),
            ignore_eos=bool(data.get("ignore_eos")),
            top_logprobs=top_logprobs,
            prompt_logprobs=data.get("prompt_logprobs"),
            truncate=data.get("truncate_prompt_tokens"),
            structured=constraint,
        )

    @staticmethod
    def constraint(data: dict[str, Any], *, tools: ToolPlan | None = None) -> StructuredOutput | None:
        """The request's one output constraint: from its structured-output parameters, or a
        forced tool call."""
        found = [
            *structured.vllm(data, invalid),
            *([f] if (f := structured.response_format(data.get("response_format"), invalid)) else []),
        ]
        chosen = structured.one(found, invalid)
        if tools is not None and (forced := forced_constraint(tools)) is not None:
            # A forced call is the whole output, no text: the response format constrains the text
            # of the turns that have some (vLLM and OpenAI do the same); it is still checked.
            return structured.one([(forced, "tool_choice")], invalid)[0]  # type: ignore[index]
        return chosen[0] if chosen is not None else None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        attrs["stream"] = bool(attrs.get("stream"))
        if attrs.get("stream_options") is not None and not attrs["stream"]:
            # As OpenAI: the option only means something for a stream.
            raise serializers.ValidationError(
                {"stream_options": "The 'stream_options' parameter is only allowed when 'stream' is enabled."}
            )
        n, best_of = attrs.get("n") or 1, attrs.get("best_of")
        if best_of is not None and best_of < n:
            raise serializers.ValidationError({"best_of": "'best_of' must be at least 'n'."})
        if best_of is not None and best_of > n and attrs["stream"]:
            raise serializers.ValidationError({"best_of": "'best_of' cannot be used with a stream."})
        return attrs


class ChatCompletionSerializer(ContextFieldsMixin, SamplingSerializer):
    REFUSED = CHAT_REFUSED

    messages: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=ChatMessageSerializer(), allow_empty=False, max_length=1000
    )
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    logprobs = StrictBooleanField(required=False, allow_null=True, default=False)
    top_logprobs = StrictIntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_TOP_LOGPROBS
    )
    # Function tools (read by inference/tools/calls.py: tool_plan).
    tools = serializers.ListField(
        child=serializers.DictField(), required=False, allow_null=True, max_length=128
    )
    tool_choice = AnyJSONField()
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True, default=None)

    @classmethod
    def to_sampling_params(cls, data: dict[str, Any], *, tools: ToolPlan | None = None) -> SamplingParams:
        return cls.common_sampling(
            data,
            max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
            top_logprobs=int(data.get("top_logprobs") or 0),
            constraint=cls.constraint(data, tools=tools),
        )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs.get("top_logprobs") and not attrs.get("logprobs"):
            raise serializers.ValidationError(
                {"top_logprobs": "'top_logprobs' needs 'logprobs' set to true."}
            )
        return attrs


class CompletionSerializer(SamplingSerializer):
    REFUSED = COMPLETION_REFUSED

    prompt = PromptField()
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    # Legacy completions: the number of alternatives per token (0 = the chosen token only).
    logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_TOP_LOGPROBS)
    # The prompt comes back before the completion (with its log-probabilities when asked).
    echo = StrictBooleanField(required=False, default=False, allow_null=True)

    @classmethod
    def to_sampling_params(cls, data: dict[str, Any]) -> SamplingParams:
        params = cls.common_sampling(
            data,
            max_tokens=data.get("max_tokens"),
            top_logprobs=int(data.get("logprobs") or 0),
            constraint=cls.constraint(data),
        )
        if data.get("echo") and data.get("logprobs") is not None and params.prompt_logprobs is None:
            # OpenAI's echo with logprobs reports the prompt's tokens too (as vLLM does).
            params = replace(params, prompt_logprobs=params.top_logprobs)
        return params
