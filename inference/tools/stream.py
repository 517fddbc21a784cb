"""The output's tool calls, parsed as the text streams (or all at once): content and
tool-call events out of a model's text, in the format its version's ``tool_parser`` names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from inference.tools.calls import ToolPlan


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
