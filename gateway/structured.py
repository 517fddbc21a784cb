"""Structured-output parameters as each protocol spells them, read into one `StructuredOutput`.

- OpenAI ``response_format``: ``text``, ``json_object``, ``json_schema`` (``{"name", "schema",
  "strict"}``); TGI's chat route also takes ``{"type": "json" | "regex" | "json_object",
  "value": ...}`` (huggingface_hub sends a json_schema as ``json_object`` with the schema);
- vLLM: ``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``, ``json_object``,
  ``disable_any_whitespace``) and the older ``guided_json`` / ``guided_regex`` /
  ``guided_choice`` / ``guided_grammar``;
- TGI ``parameters.grammar``: ``{"type": "json" | "regex", "value": ...}``;
- the Responses API ``text.format``: ``json_object``, ``json_schema`` (flat ``name``, ``schema``).

A request carries at most one constraint; a second one is a 400, not a silent choice. Every
constraint is compiled once here by llguidance (inference/structured.py) and refused with its
problem named if it does not compile, before any job exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.errors import ApiError
from gateway.parameters import Refused, check_parameters
from inference.sampling_params import StructuredKind, StructuredOutput
from inference.structured import MAX_CONSTRAINT_CHARS, validation_error

ErrorFactory = Callable[[str, str], ApiError]

Found = tuple[StructuredOutput, str]


def _schema(value: Any, param: str, error: ErrorFactory) -> dict[str, Any] | bool:
    if isinstance(value, str):  # vLLM takes a schema as a JSON string too
        if len(value) > MAX_CONSTRAINT_CHARS:
            raise error(f"The schema is too large (the limit is {MAX_CONSTRAINT_CHARS} characters).", param)
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise error(f"The schema is not valid JSON: {exc}", param) from exc
    if not isinstance(value, dict | bool):
        raise error("A JSON schema must be an object.", param)
    return value


def _text(value: Any, param: str, error: ErrorFactory, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise error(f"The {what} must be a non-empty string.", param)
    return value


def response_format(value: Any, error: ErrorFactory, *, param: str = "response_format") -> Found | None:
    """OpenAI's ``response_format`` (and TGI's grammar forms on its chat route)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise error("'response_format' must be an object.", param)
    kind = value.get("type")
    if kind == "text":
        check_parameters(value, known={"type"}, refused={}, error=error, prefix=f"{param}.")
        return None
    if kind == "json_object":
        check_parameters(value, known={"type", "value"}, refused={}, error=error, prefix=f"{param}.")
        if value.get("value") is not None:
            # TGI's form, which huggingface_hub sends for a json_schema: the schema as "value".
            return StructuredOutput.json_schema(_schema(value["value"], f"{param}.value", error)), param
        return StructuredOutput(StructuredKind.JSON_OBJECT), param
    if kind == "json_schema":
        check_parameters(value, known={"type", "json_schema"}, refused={}, error=error, prefix=f"{param}.")
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise error("'json_schema' must be an object with the schema.", f"{param}.json_schema")
        check_parameters(
            spec,
            known={"name", "description", "schema", "strict"},
            refused={},
            error=error,
            prefix=f"{param}.json_schema.",
        )
        name = spec.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            raise error("'name' must be a string of at most 64 characters.", f"{param}.json_schema.name")
        # strict: the output always follows the schema here, strict or not.
        schema = _schema(spec.get("schema", {}), f"{param}.json_schema.schema", error)
        return StructuredOutput.json_schema(schema), f"{param}.json_schema.schema"
    if kind in ("json", "regex"):  # TGI's chat route
        return grammar(value, error, param=param)
    raise error(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema' (or TGI's 'json', 'regex').",
        f"{param}.type",
    )


def grammar(value: Any, error: ErrorFactory, *, param: str) -> Found | None:
    """TGI's grammar: ``{"type": "json" | "regex", "value": ...}``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise error("The grammar must be an object with 'type' and 'value'.", param)
    check_parameters(value, known={"type", "value"}, refused={}, error=error, prefix=f"{param}.")
    kind = value.get("type")
    if kind in ("json", "json_schema"):
        return StructuredOutput.json_schema(_schema(value.get("value"), f"{param}.value", error)), param
    if kind == "regex":
        return StructuredOutput(
            StructuredKind.REGEX, _text(value.get("value"), f"{param}.value", error, "regex")
        ), param
    raise error("The grammar's 'type' must be 'json' or 'regex'.", f"{param}.type")


_STRUCTURED_OUTPUTS_REFUSED = {
    "structural_tag": Refused("structural tags are not implemented"),
    "whitespace_pattern": Refused("a custom JSON whitespace pattern is not implemented"),
    "disable_additional_properties": Refused("schemas are followed as written", (None, False)),
}


def vllm(data: dict[str, Any], error: ErrorFactory) -> list[Found]:
    """vLLM's ``structured_outputs`` object and its older ``guided_*`` fields."""
    found: list[Found] = []
    spec = data.get("structured_outputs")
    whitespace = False
    if spec is not None:
        param = "structured_outputs"
        if not isinstance(spec, dict):
            raise error("'structured_outputs' must be an object.", param)
        check_parameters(
            spec,
            known={
                "json",
                "regex",
                "choice",
                "grammar",
                "json_object",
                "disable_any_whitespace",
                "disable_fallback",
            },
            refused=_STRUCTURED_OUTPUTS_REFUSED,
            error=error,
            prefix=f"{param}.",
        )
        # vLLM allows any whitespace unless disabled; Sluice allows none unless asked (a small
        # model fills max_tokens with newlines otherwise): an explicit false asks.
        whitespace = spec.get("disable_any_whitespace") is False
        found += _vllm_fields(spec, prefix=f"{param}.", error=error)
        if spec.get("json_object") is True:
            found.append((StructuredOutput(StructuredKind.JSON_OBJECT), f"{param}.json_object"))
    found += _vllm_fields(
        {
            key.removeprefix("guided_"): data.get(key)
            for key in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
        },
        prefix="guided_",
        error=error,
    )
    if whitespace:
        found = [(StructuredOutput(s.kind, s.value, whitespace=True), p) for s, p in found]
    return found


def _vllm_fields(spec: dict[str, Any], *, prefix: str, error: ErrorFactory) -> list[Found]:
    found: list[Found] = []
    if spec.get("json") is not None:
        found.append(
            (StructuredOutput.json_schema(_schema(spec["json"], f"{prefix}json", error)), f"{prefix}json")
        )
    if spec.get("regex") is not None:
        regex = _text(spec["regex"], f"{prefix}regex", error, "regex")
        found.append((StructuredOutput(StructuredKind.REGEX, regex), f"{prefix}regex"))
    if spec.get("choice") is not None:
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise error("'choice' must be a non-empty list of non-empty strings.", f"{prefix}choice")
        found.append((StructuredOutput.choice(choices), f"{prefix}choice"))
    if spec.get("grammar") is not None:
        text = _text(spec["grammar"], f"{prefix}grammar", error, "grammar")
        found.append((StructuredOutput(StructuredKind.GRAMMAR, text), f"{prefix}grammar"))
    return found


def one(found: list[Found], error: ErrorFactory) -> Found | None:
    """The request's constraint, compiled to check it: at most one, and one that compiles."""
    if not found:
        return None
    if len(found) > 1:
        raise error(
            f"Only one output constraint per request: '{found[0][1]}' and '{found[1][1]}' were both given.",
            found[1][1],
        )
    structured, param = found[0]
    problem = validation_error(structured)
    if problem is not None:
        raise error(f"Invalid output constraint: {problem}", param)
    return structured, param
