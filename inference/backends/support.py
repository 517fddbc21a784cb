"""What each kind of backend can do with a `SamplingParams`, known before a job is queued.

The local torch backend does everything; a remote upstream gets each field in the form it takes
(inference/backends/openai_compat.py, tgi.py) or, where it has none, the request is refused by
name at the gateway (a 400 naming the parameter), never forwarded and silently dropped.

No torch here: the web process asks before it creates the job.
"""

from __future__ import annotations

from typing import Protocol

from inference.sampling_params import SamplingParams, StructuredKind


class _Version(Protocol):
    @property
    def backend(self) -> str: ...

    @property
    def token_ids(self) -> bool: ...


def unsupported_by(version: _Version, params: SamplingParams) -> tuple[str, str] | None:
    """(field, why) for the first field this version's backend cannot honour, or None."""
    if version.backend == "openai":
        return _openai(params, token_ids=version.token_ids)
    if version.backend == "tgi":
        return _tgi(params)
    return None


def _openai(params: SamplingParams, *, token_ids: bool) -> tuple[str, str] | None:
    if params.typical_p < 1.0:
        return "typical_p", "OpenAI-compatible servers have no typical sampling"
    if params.prompt_logprobs is not None:
        return (
            "prompt_logprobs",
            "prompt log-probabilities are not available from an OpenAI-compatible upstream",
        )
    if token_ids:
        return None  # vLLM, SGLang, another Sluice: vLLM's extensions carry the rest
    # Text mode (OpenAI, llama.cpp, Ollama): OpenAI's own fields only, and no token ids (the
    # upstream's tokenizer is not this version's).
    for field, set_ in (
        ("min_tokens", params.min_tokens > 0),
        ("min_p", params.min_p > 0.0),
        ("repetition_penalty", params.repetition_penalty != 1.0),
        ("logit_bias", bool(params.logit_bias)),
        ("stop_token_ids", bool(params.stop_token_ids)),
        ("allowed_token_ids", bool(params.allowed_token_ids)),
        ("structured", params.structured is not None),
    ):
        if set_:
            return field, "the upstream speaks text, not token ids (OpenAI's completions fields only)"
    return None


def _tgi(params: SamplingParams) -> tuple[str, str] | None:
    for field, set_ in (
        ("prompt_logprobs", params.prompt_logprobs is not None),
        ("presence_penalty", bool(params.presence_penalty)),
        ("logit_bias", bool(params.logit_bias)),
        ("min_tokens", params.min_tokens > 0),
        ("min_p", params.min_p > 0.0),
        ("stop_token_ids", bool(params.stop_token_ids)),
        ("allowed_token_ids", bool(params.allowed_token_ids)),
    ):
        if set_:
            return field, "text-generation-inference has no such parameter"
    structured = params.structured
    if structured is not None and structured.kind not in (
        StructuredKind.JSON_SCHEMA,
        StructuredKind.JSON_OBJECT,
        StructuredKind.REGEX,
    ):
        return "structured", "text-generation-inference constrains to a JSON schema or a regex only"
    return None
