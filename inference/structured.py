"""Structured outputs: a `StructuredOutput` as a grammar of llguidance, and its validation.

Why llguidance (and not xgrammar, the other well-kept engine on the registry): it has no
dependency (xgrammar pulls torch, transformers and triton), so the web process can check a
schema, regex or grammar and answer a 400 naming the problem without loading torch or the
model's vocabulary; it builds a grammar's token masks lazily, so there is no compile step
that takes seconds on a large schema, and one compiled matcher is deep-copied per sequence
(inference/backends/grammar.py). vLLM ships both as backends.

Footguns handled here and in the backend: JSON's free whitespace is off unless asked for (a
small model can fill ``max_tokens`` with newlines); the mask is sized to the model's logits,
not the tokenizer's vocabulary (ids past the tokenizer are never allowed); a matcher in an
error state stays there (the sequence fails, it does not decode unconstrained).
"""

from __future__ import annotations

import json
from typing import Any

from inference.sampling_params import StructuredKind, StructuredOutput

#: The largest schema, regex or grammar a request may carry (characters).
MAX_CONSTRAINT_CHARS = 65_536


def grammar_of(structured: StructuredOutput) -> str:
    """The constraint as an llguidance grammar (what `LLMatcher` compiles)."""
    # lazy: llguidance loads with the first structured request, not in every process
    import llguidance

    kind = structured.kind
    if kind in (StructuredKind.JSON_SCHEMA, StructuredKind.JSON_OBJECT):
        schema: Any = {"type": "object"}  # json_object: any JSON object
        if kind is StructuredKind.JSON_SCHEMA:
            schema = json.loads(structured.value)
            schema = {} if schema is True else schema
        return str(
            llguidance.LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": structured.whitespace}
            )
        )
    if kind is StructuredKind.REGEX:
        return str(llguidance.LLMatcher.grammar_from_regex(structured.value))
    if kind is StructuredKind.CHOICE:
        return str(llguidance.grammar_from("choice", structured.value))
    return str(llguidance.grammar_from("grammar", structured.value))  # Lark, or GBNF converted


def validation_error(structured: StructuredOutput) -> str | None:
    """Why this constraint cannot be compiled (a message for a 400), or None if it can."""
    import llguidance  # lazy: see grammar_of

    if len(structured.value) > MAX_CONSTRAINT_CHARS:
        return f"it is too large ({len(structured.value)} characters; the limit is {MAX_CONSTRAINT_CHARS})"
    if structured.kind is StructuredKind.CHOICE and not json.loads(structured.value):
        return "the list of choices is empty"
    try:
        grammar = grammar_of(structured)
    except (ValueError, TypeError) as exc:
        return str(exc) or type(exc).__name__
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return _first_line(messages[0] if messages else "invalid grammar")
    return None


def _first_line(message: str) -> str:
    # llguidance's messages echo the grammar around the error; keep the cause.
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    causes = [line for line in lines if line.startswith("error:")]
    head = lines[0] if lines else message
    return (f"{head} {causes[0]}" if causes else head)[:500]
