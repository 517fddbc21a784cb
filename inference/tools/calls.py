"""A request's tools: what it asked (``ToolPlan``), how a forced call constrains the output, and
a call's arguments as an object. The output's calls are parsed as it streams in ``stream.py``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from inference.sampling_params import StructuredOutput

ChoiceMode = Literal["none", "auto", "required", "function"]

#: Tool-call formats a model version may be parsed with (ModelVersion.tool_parser).
PARSERS = ("hermes", "llama3_json", "none")


class ToolError(ValueError):
    """A request's tools or tool choice that cannot be served (a 400 naming ``param``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolPlan:
    """What a request asked of tools, stored with the job (``input["tool_plan"]``).

    ``tools``: OpenAI function tools as the chat template receives them
    (``{"type": "function", "function": {"name", "description", "parameters"}}``).
    ``parser``: the version's format for free (``auto``) calls, recorded at submission so that a
    replay shapes the same calls whatever the version says later.
    """

    tools: tuple[dict[str, Any], ...]
    mode: ChoiceMode = "auto"
    name: str = ""  # the function ``mode == "function"`` forces
    parallel: bool = True
    parser: str = "hermes"

    @property
    def rendered(self) -> bool:
        """The template sees the tools (not with ``none``: the model is not to call any)."""
        return self.mode != "none"

    @property
    def active(self) -> bool:
        """The output may hold calls."""
        return self.mode != "none" and (self.mode != "auto" or self.parser != "none")

    def names(self) -> list[str]:
        return [str(tool["function"]["name"]) for tool in self.tools]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tools": list(self.tools),
            "mode": self.mode,
            "name": self.name,
            "parallel": self.parallel,
            "parser": self.parser,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolPlan:
        return cls(
            tools=tuple(data.get("tools") or ()),
            mode=data.get("mode", "auto"),
            name=str(data.get("name") or ""),
            parallel=bool(data.get("parallel", True)),
            parser=str(data.get("parser") or "hermes"),
        )


def tool_plan(
    tools: Sequence[dict[str, Any]] | None,
    choice: Any,
    *,
    parallel: bool | None,
    parser: str,
    tools_param: str = "tools",
    choice_param: str = "tool_choice",
) -> ToolPlan | None:
    """A request's OpenAI ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` as a plan (None:
    no tools). ``choice``: "none" | "auto" | "required" | {"type": "function", "function":
    {"name"}} (huggingface_hub leaves out ``type``; the Responses API puts ``name`` at the top)."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise ToolError(f"'{choice_param}' needs 'tools'.", choice_param)
        return None
    normalized = []
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
        ):
            raise ToolError("Only function tools are supported.", f"{tools_param}[{index}]")
        name = function.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ToolError(
                "A function needs a name of 1 to 64 characters.", f"{tools_param}[{index}].function.name"
            )
        if name in seen:
            raise ToolError(f"Two functions are named '{name}'.", f"{tools_param}[{index}].function.name")
        seen.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ToolError(
                "'parameters' must be a JSON schema object.", f"{tools_param}[{index}].function.parameters"
            )
        spec: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str):
            spec["description"] = function["description"]
        spec["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        normalized.append({"type": "function", "function": spec})
    mode: ChoiceMode
    forced = ""
    if choice in (None, "auto"):
        mode = "auto"
    elif choice in ("none", "required"):
        mode = choice
    elif isinstance(choice, dict):
        target = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        name = target.get("name") if isinstance(target, dict) else None
        if choice.get("type", "function") != "function" or not isinstance(name, str):
            raise ToolError(
                "A named tool choice is {'type': 'function', 'function': {'name': ...}}.", choice_param
            )
        if name not in seen:
            raise ToolError(f"Tool '{name}' has not been passed in '{tools_param}'.", choice_param)
        mode, forced = "function", name
    else:
        raise ToolError("'tool_choice' must be 'none', 'auto', 'required' or a named function.", choice_param)
    return ToolPlan(
        tools=tuple(normalized), mode=mode, name=forced, parallel=parallel is not False, parser=parser
    )


def forced_constraint(plan: ToolPlan) -> StructuredOutput | None:
    """The output constraint of a forced call: a named function's arguments, or (required) a
    JSON array of ``{"name", "parameters"}`` calls, one item unless calls may be parallel (as
    vLLM builds it, ``$defs`` lifted to the top)."""
    if plan.mode == "function":
        tool = next(t for t in plan.tools if t["function"]["name"] == plan.name)
        return StructuredOutput.json_schema(tool["function"]["parameters"])
    if plan.mode != "required":
        return None
    defs: dict[str, Any] = {}
    variants = []
    for tool in plan.tools:
        parameters = dict(tool["function"]["parameters"])
        for name, schema in (parameters.pop("$defs", None) or {}).items():
            if name in defs and defs[name] != schema:
                raise ToolError(f"Two tools define '$defs.{name}' differently.", "tools")
            defs[name] = schema
        variants.append(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [tool["function"]["name"]]},
                    "parameters": parameters,
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
        )
    calls: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    if not plan.parallel:
        calls["maxItems"] = 1
    if defs:
        calls["$defs"] = defs
    return StructuredOutput.json_schema(calls)


def arguments_object(text: str) -> Any:
    """A call's arguments as chat templates expect them (transformers' convention): the JSON
    object, or the text as it came when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text
