"""A request's tools, how they constrain or are parsed from the output, and the stream of calls."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
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


# -- the output -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class Arguments:
    index: int
    text: str


Event = Content | CallStart | Arguments


@dataclass
class Call:
    id: str
    name: str
    arguments: str = ""


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


class ToolCallStream:
    """Text in, content and tool-call events out, as the text streams (or all at once).

    ``call_id``: the ids of the calls, a function of the job and the call's index, so that a
    replayed stream names its calls as the first reading did.
    """

    def __init__(self, plan: ToolPlan, *, call_id: str) -> None:
        self.plan = plan
        self.call_id = call_id
        self.calls: list[Call] = []
        self.content = ""
        self._buffer = ""
        self._held = ""  # whitespace-only content, sent once something follows it
        self._inside = False
        self._decided = False  # llama3_json: whether the output is calls or text
        self._json = False
        self._scan = _ArrayScanner()

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        if not text:
            return []
        plan = self.plan
        if not plan.active:
            return self._content(text)
        if plan.mode == "function":
            events: list[Event] = []
            if not self.calls:
                events.append(self._start(plan.name))
            self.calls[0].arguments += text
            return [*events, Arguments(0, text)]
        if plan.mode == "required":
            return [event for item in self._scan.feed(text) for event in self._item(item)]
        if plan.parser == "llama3_json":
            return self._llama3(text)
        return self._hermes(text)

    def finish(self) -> list[Event]:
        plan = self.plan
        if plan.mode == "auto" and plan.parser == "llama3_json" and self._json:
            return self._llama3_end()
        if plan.mode == "auto" and plan.parser == "hermes" and plan.active:
            if self._inside:
                call = self._hermes_call(self._buffer)
                raw, self._buffer, self._inside = _OPEN + self._buffer, "", False
                return call if call is not None else self._content(raw, final=True)
            rest, self._buffer = self._buffer, ""
            return self._content(rest, final=True)
        return []

    def read_all(self, text: str) -> list[Event]:
        return [*self.feed(text), *self.finish()]

    # -- formats -------------------------------------------------------------------------------

    def _hermes(self, text: str) -> list[Event]:
        events: list[Event] = []
        self._buffer += text
        while True:
            if self._inside:
                end = self._buffer.find(_CLOSE)
                if end < 0:
                    return events
                body, self._buffer = self._buffer[:end], self._buffer[end + len(_CLOSE) :]
                self._inside = False
                call = self._hermes_call(body)
                events += call if call is not None else self._content(_OPEN + body + _CLOSE)
                continue
            start = self._buffer.find(_OPEN)
            if start >= 0:
                before, self._buffer = self._buffer[:start], self._buffer[start + len(_OPEN) :]
                events += self._content(before, before_call=True)
                self._inside = True
                continue
            keep = _partial_suffix(self._buffer, _OPEN)
            ready, self._buffer = (
                self._buffer[: len(self._buffer) - keep],
                self._buffer[len(self._buffer) - keep :],
            )
            return events + self._content(ready)

    def _hermes_call(self, body: str) -> list[Event] | None:
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return self._parsed_call(data)

    def _parsed_call(self, data: Any) -> list[Event] | None:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        if self.calls and not self.plan.parallel:
            return []  # one call asked for: the rest are dropped (as OpenAI answers)
        arguments = data.get("arguments", data.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        start = self._start(data["name"])
        self.calls[-1].arguments = text
        return [start, Arguments(start.index, text)]

    def _llama3(self, text: str) -> list[Event]:
        if self._decided and not self._json:
            return self._content(text)
        self._buffer += text
        if not self._decided:
            stripped = self._buffer.lstrip()
            if not stripped:
                return []
            self._decided = True
            self._json = stripped.startswith("{")
            if not self._json:
                text, self._buffer = self._buffer, ""
                return self._content(text)
        return []

    def _llama3_end(self) -> list[Event]:
        decoder = json.JSONDecoder()
        text, self._buffer = self._buffer, ""
        position, found = 0, []
        while True:
            while position < len(text) and text[position] in " \t\r\n;":
                position += 1
            if position >= len(text):
                break
            try:
                data, position = decoder.raw_decode(text, position)
            except ValueError:
                return self._content(text, final=True)
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                return self._content(text, final=True)
            found.append(data)
        events: list[Event] = []
        for data in found:
            events += self._parsed_call(data) or []
        return events

    def _item(self, item: str) -> list[Event]:
        try:
            data = json.loads(item)
        except ValueError:
            return []
        return self._parsed_call(data) or []

    # -- helpers -------------------------------------------------------------------------------

    def _start(self, name: str) -> CallStart:
        index = len(self.calls)
        call = Call(id=f"{self.call_id}_{index}", name=name)
        self.calls.append(call)
        return CallStart(index, call.id, name)

    def _content(self, text: str, *, before_call: bool = False, final: bool = False) -> list[Event]:
        """Content, with whitespace alone held back: dropped before a call or at the end."""
        text = self._held + text
        self._held = ""
        if not text:
            return []
        if not text.strip():
            if not (before_call or final):
                self._held = text
            return []
        self.content += text
        return [Content(text)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


@dataclass
class _ArrayScanner:
    """Splits a streamed JSON array into its items' texts as each one completes."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    item: list[str] = field(default_factory=list)

    def feed(self, text: str) -> list[str]:
        done = []
        for char in text:
            if self.depth >= 2 or (self.depth == 1 and char not in " \t\r\n,]"):
                self.item.append(char)
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                continue
            if char == '"':
                self.in_string = True
            elif char in "[{":
                self.depth += 1
            elif char in "]}":
                self.depth -= 1
                if self.depth == 1 and self.item:
                    done.append("".join(self.item))
                    self.item = []
        return done
