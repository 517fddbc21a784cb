"""Guardrails: checks on what goes into the model and what comes out, per rate-limit policy.

A policy's ``guards`` names them (gateway.models.RateLimitPolicy.guards)::

    {"input":  [{"kind": "deny_list", "patterns": ["(?i)password dump"]},
                {"kind": "pii"},
                {"kind": "injection", "threshold": 0.5},
                {"kind": "classifier", "class": "mypkg.guards.Toxicity", "threshold": 0.8}],
     "output": [{"kind": "deny_list", "patterns": ["(?i)internal use only"]},
                {"kind": "pii", "kinds": ["email", "card"]}]}

Kinds are small classes chosen from settings (``SLUICE_GUARD_KINDS``: kind -> class path), as
DRF picks its throttles: the built-in ones are below, an operator adds their own.

- Input guards run in the gateway's prepare step, before the prompt reaches a queue, a
  worker or the database: ``refuse`` answers 400 ``content_filtered``; ``redact`` replaces the
  matched text (PII) in what is stored and run.
- Output guards run in the engine, on the text as it is generated, so the stream, the stored
  answer and the result cache all see the same text. They hold back a short tail (``HOLD``
  characters) so that a match split across tokens is still caught; a deny-list match ends the
  sequence with finish reason ``content_filter`` (the text before it is kept), PII is
  redacted in place. Token ids and log-probabilities are the model's own (not redacted).

No Django here: the engine imports it.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

HOLD = 64  # characters an output guard holds back (its longest possible match)


class GuardConfigError(ValueError):
    """A policy names a guard that does not exist or has bad options."""


@dataclass(frozen=True)
class Verdict:
    """An input guard's decision: ``allow`` (``text`` possibly redacted) or ``refuse``."""

    allowed: bool
    text: str
    guard: str = ""
    reason: str = ""
    redactions: int = 0


class Guard(ABC):  # noqa: B024 - hooks with defaults; a guard overrides the ones it needs
    """Base class of input and output guards. ``options`` come from the policy's JSON."""

    kind: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def check(self, text: str) -> Verdict:
        """Input: refuse, redact or allow ``text`` (one message, or the prompt)."""
        return Verdict(True, text)

    def stream(self) -> StreamFilter | None:
        """Output: a filter for one sequence's text, or None if this guard has no output side."""
        return None


class StreamFilter(ABC):  # noqa: B024 - an overridable default
    """Output side of a guard for one sequence: text in, text safe to send out."""

    blocked = False

    def feed(self, text: str) -> str:
        return text

    def flush(self) -> str:
        return ""


class _HoldingFilter(StreamFilter):
    """Keeps the last HOLD characters until more text shows whether they start a match."""

    def __init__(self) -> None:
        self.buffer = ""

    def feed(self, text: str) -> str:
        if self.blocked:
            return ""
        self.buffer += text
        return self._release(final=False)

    def flush(self) -> str:
        return "" if self.blocked else self._release(final=True)

    def _release(self, *, final: bool) -> str:
        raise NotImplementedError


# -- deny list ---------------------------------------------------------------------------------


def _compile(patterns: Any, kind: str) -> list[re.Pattern[str]]:
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise GuardConfigError(f"{kind}: 'patterns' must be a list of regular expressions")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise GuardConfigError(f"{kind}: bad pattern {pattern!r}: {exc}") from exc
    return compiled


class DenyList(Guard):
    """Refuses input, or stops output, that matches any of ``patterns`` (regular expressions)."""

    kind = "deny_list"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.patterns = _compile(options.get("patterns", []), self.kind)

    def _first(self, text: str) -> re.Match[str] | None:
        found = [m for m in (p.search(text) for p in self.patterns) if m is not None]
        return min(found, key=lambda m: m.start()) if found else None

    def check(self, text: str) -> Verdict:
        match = self._first(text)
        if match is None:
            return Verdict(True, text)
        return Verdict(False, text, guard=self.kind, reason="the input matches a blocked pattern")

    def stream(self) -> StreamFilter:
        return _DenyFilter(self)


class _DenyFilter(_HoldingFilter):
    def __init__(self, guard: DenyList) -> None:
        super().__init__()
        self.guard = guard

    def _release(self, *, final: bool) -> str:
        match = self.guard._first(self.buffer)
        if match is not None:
            self.blocked = True
            out = self.buffer[: match.start()]
            self.buffer = ""
            return out
        cut = len(self.buffer) if final else max(0, len(self.buffer) - HOLD)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out


# -- PII ----------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,4}(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


class PiiRedactor(Guard):
    """Replaces e-mail addresses, phone numbers and payment card numbers (Luhn-checked) with
    ``[REDACTED:<kind>]`` in input and output."""

    kind = "pii"
    KINDS = ("email", "card", "phone")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        kinds = options.get("kinds", list(self.KINDS))
        if not isinstance(kinds, list) or any(k not in self.KINDS for k in kinds):
            raise GuardConfigError(f"pii: 'kinds' must be a list of {', '.join(self.KINDS)}")
        self.kinds = [k for k in self.KINDS if k in kinds]  # cards before phones: both are digits

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        found: list[tuple[int, int, str]] = []

        def free(start: int, end: int) -> bool:
            return all(end <= s or start >= e for s, e, _ in found)

        for kind in self.kinds:
            if kind == "email":
                found += [(m.start(), m.end(), kind) for m in _EMAIL.finditer(text)]
            elif kind == "card":
                for m in _CARD.finditer(text):
                    if _luhn(_digits(m.group())) and free(m.start(), m.end()):
                        found.append((m.start(), m.end(), kind))
            elif kind == "phone":
                for m in _PHONE.finditer(text):
                    if 9 <= len(_digits(m.group())) <= 15 and free(m.start(), m.end()):
                        found.append((m.start(), m.end(), kind))
        return sorted(found)

    def redact(self, text: str, spans: Sequence[tuple[int, int, str]]) -> str:
        out, position = [], 0
        for start, end, kind in spans:
            out.append(text[position:start])
            out.append(f"[REDACTED:{kind}]")
            position = end
        out.append(text[position:])
        return "".join(out)

    def check(self, text: str) -> Verdict:
        spans = self.spans(text)
        return Verdict(True, self.redact(text, spans), guard=self.kind, redactions=len(spans))

    def stream(self) -> StreamFilter:
        return _RedactFilter(self)


class _RedactFilter(_HoldingFilter):
    def __init__(self, guard: PiiRedactor) -> None:
        super().__init__()
        self.guard = guard

    def _release(self, *, final: bool) -> str:
        spans = self.guard.spans(self.buffer)
        cut = len(self.buffer) if final else max(0, len(self.buffer) - HOLD)
        for start, end, _ in spans:
            if start < cut < end:
                cut = start  # a match reaching into the tail may still grow: hold all of it
        out = self.guard.redact(self.buffer[:cut], [s for s in spans if s[1] <= cut])
        self.buffer = self.buffer[cut:]
        return out


# -- prompt injection ---------------------------------------------------------------------------

_INJECTION = [
    (r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|your)\b"
     r".{0,30}\b(instructions?|rules|prompts?|directions|guidelines)", 0.6),
    (r"\b(reveal|print|show|repeat|output|leak)\b.{0,40}\b(system prompt|instructions|hidden prompt)", 0.5),
    (r"\byou are now\b|\bfrom now on,? you\b", 0.3),
    (r"\b(developer|god|jailbreak|dan) mode\b|\bdo anything now\b|\bjailbreak\b", 0.5),
    (r"<\|?(im_start|system|endoftext)\|?>|\[/?INST\]|^\s*###\s*(system|instruction)", 0.5),
    (r"\bpretend (to be|you are)\b|\bact as (if|an? )\b", 0.2),
    (r"\bno (restrictions|limits|filters|rules)\b|\bwithout (any )?(restrictions|filters)\b", 0.3),
]  # fmt: skip
_INJECTION_PATTERNS = [
    (re.compile(pattern, re.IGNORECASE | re.MULTILINE), weight) for pattern, weight in _INJECTION
]


def injection_score(text: str) -> float:
    """0..1: how much the text looks like an attempt to override the model's instructions
    (combined as independent signals: 1 - prod(1 - weight))."""
    remaining = 1.0
    for pattern, weight in _INJECTION_PATTERNS:
        if pattern.search(text):
            remaining *= 1.0 - weight
    return round(1.0 - remaining, 4)


class InjectionScorer(Guard):
    """Refuses input whose prompt-injection score reaches ``threshold`` (default 0.5)."""

    kind = "injection"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        threshold = options.get("threshold", 0.5)
        if not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise GuardConfigError("injection: 'threshold' must be a number in (0, 1]")
        self.threshold = float(threshold)

    def check(self, text: str) -> Verdict:
        score = injection_score(text)
        if score >= self.threshold:
            return Verdict(
                False, text, guard=self.kind, reason=f"possible prompt injection (score {score:.2f})"
            )
        return Verdict(True, text)


class ClassifierHook(Guard):
    """An operator's own classifier: ``class`` names an importable class whose instances have
    ``score(text) -> float`` (0..1); input scoring at or above ``threshold`` is refused. It runs
    in the web process: keep it light (or make it call a service)."""

    kind = "classifier"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        path = options.get("class")
        if not isinstance(path, str) or "." not in path:
            raise GuardConfigError("classifier: 'class' must be an importable 'module.Class' path")
        module, _, name = path.rpartition(".")
        try:
            self.classifier = getattr(importlib.import_module(module), name)()
        except (ImportError, AttributeError) as exc:
            raise GuardConfigError(f"classifier: cannot load {path}: {exc}") from exc
        self.threshold = float(options.get("threshold", 0.5))

    def check(self, text: str) -> Verdict:
        score = float(self.classifier.score(text))
        if score >= self.threshold:
            return Verdict(
                False, text, guard=self.kind, reason=f"refused by the content classifier ({score:.2f})"
            )
        return Verdict(True, text)


BUILT_IN: dict[str, type[Guard]] = {
    g.kind: g for g in (DenyList, PiiRedactor, InjectionScorer, ClassifierHook)
}
OUTPUT_KINDS = frozenset({"deny_list", "pii"})


def guard_classes(extra: Mapping[str, str] | None = None) -> dict[str, type[Guard]]:
    """Built-in kinds plus ``extra`` (kind -> 'module.Class', from SLUICE_GUARD_KINDS)."""
    classes = dict(BUILT_IN)
    for kind, path in (extra or {}).items():
        module, _, name = path.rpartition(".")
        try:
            classes[kind] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise GuardConfigError(f"guard kind {kind!r}: cannot load {path}: {exc}") from exc
    return classes


def build(specs: Any, *, side: str, extra: Mapping[str, str] | None = None) -> list[Guard]:
    """Guards from a policy's list of ``{"kind": ..., **options}``; raises GuardConfigError."""
    if specs in (None, []):
        return []
    if not isinstance(specs, list | tuple):
        raise GuardConfigError(f"guards.{side} must be a list")
    classes = guard_classes(extra)
    guards = []
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
            raise GuardConfigError(f"each of guards.{side} must be an object with a 'kind'")
        kind = spec["kind"]
        if kind not in classes:
            raise GuardConfigError(f"unknown guard kind {kind!r} (known: {', '.join(sorted(classes))})")
        if side == "output" and classes[kind] in BUILT_IN.values() and kind not in OUTPUT_KINDS:
            raise GuardConfigError(f"guard kind {kind!r} has no output side")
        guards.append(classes[kind](**{k: v for k, v in spec.items() if k != "kind"}))
    return guards


def validate(config: Any, *, extra: Mapping[str, str] | None = None) -> None:
    if config in (None, {}):
        return
    if not isinstance(config, dict) or set(config) - {"input", "output"}:
        raise GuardConfigError("guards must be an object with 'input' and/or 'output' lists")
    build(config.get("input"), side="input", extra=extra)
    build(config.get("output"), side="output", extra=extra)


class OutputGuards:
    """The output filters of one sequence, chained: text in, what may be sent out."""

    def __init__(self, specs: Any, extra: Mapping[str, str] | None = None) -> None:
        filters = [g.stream() for g in build(specs, side="output", extra=extra)]
        self.filters = [f for f in filters if f is not None]

    @property
    def blocked(self) -> bool:
        return any(f.blocked for f in self.filters)

    def feed(self, text: str) -> str:
        for stream_filter in self.filters:
            text = stream_filter.feed(text)
        return text

    def flush(self) -> str:
        text = ""
        for stream_filter in self.filters:
            text = stream_filter.feed(text) + stream_filter.flush()
        return text
