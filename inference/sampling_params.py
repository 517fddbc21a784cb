"""`SamplingParams`: what a request asks of generation, one object from the protocol to the engine.

Each protocol package builds it from its own field names (``to_sampling_params`` on its
serializers), the prepare step resolves what depends on the prompt (``max_tokens`` against the
context window), the job row stores it (`as_dict`), and the worker reads it back (`from_dict`)
for the engine, the local backend's batched logits processing and the remote backends, which
forward each field in the form their upstream takes. A field exists here once (as in vLLM's
``sampling_params.py``).

Nothing here imports Django, torch or a grammar engine: the web process, the engine and the
backends all import it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from typing import Any

#: Tokens generated when a request gives no ``max_tokens`` and nothing resolved it (vLLM's default).
DEFAULT_MAX_TOKENS = 16


class StructuredKind(enum.StrEnum):
    """What a structured-output constraint is written in."""

    JSON_SCHEMA = "json"  # a JSON schema (OpenAI json_schema, vLLM guided_json, TGI grammar json)
    JSON_OBJECT = "json_object"  # any JSON object (OpenAI json_object)
    REGEX = "regex"  # vLLM guided_regex, TGI grammar regex
    CHOICE = "choice"  # one of a list of strings (vLLM guided_choice)
    GRAMMAR = "grammar"  # a Lark or GBNF grammar (vLLM guided_grammar)


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the text a sequence may generate, compiled to a token mask per step.

    ``value`` is the constraint as text: the schema as compact JSON, the regex, the choices as
    a JSON list, the grammar; the same text is compiled once per version.
    ``whitespace``: JSON may carry free whitespace between tokens (off by default: a small model
    can otherwise fill its whole budget with newlines, as vLLM's ``disable-any-whitespace`` notes).
    """

    kind: StructuredKind
    value: str = ""
    whitespace: bool = False

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> StructuredOutput:
        # Keys keep their order: properties are generated in the order the schema lists them.
        return cls(StructuredKind.JSON_SCHEMA, json.dumps(schema, separators=(",", ":")))

    @classmethod
    def choice(cls, choices: list[str]) -> StructuredOutput:
        return cls(StructuredKind.CHOICE, json.dumps(list(choices), separators=(",", ":")))

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind.value, "value": self.value}
        if self.whitespace:
            data["whitespace"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructuredOutput:
        return cls(StructuredKind(data["kind"]), str(data.get("value", "")), bool(data.get("whitespace")))


# Fields every stored job carries; the rest only where they differ from their default, so that
# a plain request's row (and its result-cache key) keeps the shape it always had.
_ALWAYS_STORED = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence generation parameters. ``temperature == 0`` (or ``top_k == 1``) is greedy."""

    #: Most tokens to generate. None until the prepare step resolves it against the context.
    max_tokens: int | None = None
    #: Fewest tokens to generate: end-of-sequence and ``stop_token_ids`` are masked until then
    #: (vLLM's ``min_tokens``). Stop strings still stop.
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    #: Drop tokens whose probability is below ``min_p`` times the most likely one's (vLLM).
    min_p: float = 0.0
    #: Locally typical sampling (TGI's and transformers' ``typical_p``); 1.0 is off.
    typical_p: float = 1.0
    seed: int | None = None
    #: OpenAI's penalties over the tokens generated so far: ``presence`` once per distinct
    #: token, ``frequency`` per occurrence, both subtracted from the logits.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: transformers'/TGI's multiplicative penalty over the prompt and the output: a seen
    #: token's positive logit is divided by it, a negative one multiplied. 1.0 is off.
    repetition_penalty: float = 1.0
    #: Added to the logits of these token ids, ``(id, bias)`` sorted by id (OpenAI logit_bias).
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop: tuple[str, ...] = ()
    #: Token ids that end the sequence (vLLM); the token is generated and counted.
    stop_token_ids: tuple[int, ...] = ()
    #: Only these token ids may be generated (vLLM's allowed_token_ids), sorted; () is any.
    allowed_token_ids: tuple[int, ...] = ()
    #: Keep a matched stop string in the output (TGI does; OpenAI does not).
    include_stop: bool = False
    #: Generate exactly max_tokens (benchmarks, as vLLM's ignore_eos).
    ignore_eos: bool = False
    #: Alternatives reported with each token (OpenAI top_logprobs, TGI top_n_tokens), 0..20.
    top_logprobs: int = 0
    #: Log-probabilities of the prompt's tokens, with this many alternatives each (vLLM's
    #: prompt_logprobs, TGI's decoder_input_details with 0); None: not asked for.
    prompt_logprobs: int | None = None
    #: Keep only the last ``truncate`` prompt tokens (TGI truncate, vLLM truncate_prompt_tokens).
    truncate: int | None = None
    #: Constrain the output to a schema, regex, choice or grammar (structured outputs, forced
    #: tool calls).
    structured: StructuredOutput | None = None
    #: The policy's output guards (inference/guards.py), applied by the engine to the text.
    output_guards: tuple[dict[str, Any], ...] = ()
    #: Parallel sampling (OpenAI n and best_of, TGI best_of): which of the request's choices this
    #: job is. Choices after the first share its prompt: billed once, recorded in a session once.
    choice: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    @property
    def max_new_tokens(self) -> int:
        """``max_tokens`` as the engine reads it (resolved by the prepare step)."""
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    @property
    def penalized(self) -> bool:
        """Needs the tokens seen so far (presence, frequency or repetition penalty)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def processed(self) -> bool:
        """Its logits are changed before sampling (sequences without any of these pay nothing)."""
        return self.penalized or bool(self.logit_bias or self.allowed_token_ids) or self.min_tokens > 0

    # -- storage (the job row's ``params``) ---------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name not in _ALWAYS_STORED and value == spec.default:
                continue
            if spec.name in ("stop", "stop_token_ids", "allowed_token_ids", "output_guards"):
                value = list(value)
            elif spec.name == "logit_bias":
                value = {str(token): bias for token, bias in value}
            elif spec.name == "structured":
                value = value.as_dict()
            data[spec.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        def number(name: str, default: float) -> float:
            value = data.get(name)
            return default if value is None else float(value)

        def optional_int(name: str) -> int | None:
            value = data.get(name)
            return None if value is None else int(value)

        prompt_logprobs = data.get("prompt_logprobs")
        if isinstance(prompt_logprobs, bool):  # rows written before it counted alternatives
            prompt_logprobs = 0 if prompt_logprobs else None
        structured = data.get("structured")
        return cls(
            max_tokens=optional_int("max_tokens"),
            min_tokens=int(data.get("min_tokens") or 0),
            temperature=number("temperature", 1.0),
            top_p=number("top_p", 1.0),
            top_k=int(data.get("top_k") or 0),
            min_p=number("min_p", 0.0),
            typical_p=number("typical_p", 1.0),
            seed=optional_int("seed"),
            presence_penalty=number("presence_penalty", 0.0),
            frequency_penalty=number("frequency_penalty", 0.0),
            repetition_penalty=number("repetition_penalty", 1.0),
            logit_bias=logit_bias_of(data.get("logit_bias") or {}),
            stop=tuple(data.get("stop") or ()),
            stop_token_ids=tuple(int(i) for i in data.get("stop_token_ids") or ()),
            allowed_token_ids=tuple(int(i) for i in data.get("allowed_token_ids") or ()),
            include_stop=bool(data.get("include_stop", False)),
            ignore_eos=bool(data.get("ignore_eos", False)),
            top_logprobs=int(data.get("top_logprobs") or 0),
            prompt_logprobs=None if prompt_logprobs is None else int(prompt_logprobs),
            truncate=optional_int("truncate"),
            structured=StructuredOutput.from_dict(structured) if structured else None,
            output_guards=tuple(data.get("output_guards") or ()),
            choice=int(data.get("choice") or 0),
        )


def logit_bias_of(value: dict[Any, Any]) -> tuple[tuple[int, float], ...]:
    """``{"<token id>": bias}`` (OpenAI's JSON form) -> sorted ``(id, bias)`` pairs."""
    return tuple(sorted((int(token), float(bias)) for token, bias in value.items()))


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "SamplingParams",
    "StructuredKind",
    "StructuredOutput",
    "logit_bias_of",
]
