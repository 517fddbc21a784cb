"""Every request parameter is honoured or refused by name, never silently ignored.

Each protocol's request serializer declares every parameter its clients may send: the ones
Sluice honours as typed fields, the ones it does not as `Refused` entries with the values that
mean "not used" (clients often send defaults explicitly: ``"logprobs": false``,
``"use_beam_search": false``). `check_parameters` runs before the serializer: a name the
protocol does not define at all, or a refused one with a value that would change the answer,
is a 400 (TGI: 422) that names it.

`parameter_table` renders the same declarations as the README's table, so the documentation
cannot drift from what the code does (tests/gateway/test_parameters.py compares them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rest_framework import serializers

from gateway.errors import ApiError


@dataclass(frozen=True)
class Refused:
    """A parameter the protocol defines and Sluice does not implement: accepted only at one of
    its ``neutral`` values. ``why``: one line for the README and the error message."""

    why: str
    neutral: tuple[Any, ...] = (None,)


def _same(value: Any, neutral: Any) -> bool:
    # True == 1 and False == 0 in Python: a JSON boolean is not a neutral number, or vice versa.
    return (type(value) is type(neutral) and value == neutral) or (
        isinstance(value, int | float)
        and isinstance(neutral, int | float)
        and not isinstance(value, bool)
        and not isinstance(neutral, bool)
        and value == neutral
    )


def check_parameters(
    data: Mapping[str, Any],
    *,
    known: Iterable[str],
    refused: Mapping[str, Refused],
    error: Callable[[str, str], ApiError],
    prefix: str = "",
) -> None:
    """Raise ``error(message, param)`` for the first unknown parameter, or refused one with a
    value other than its neutral ones."""
    names = set(known)
    for name, value in data.items():
        param = f"{prefix}{name}"
        if name in refused:
            rule = refused[name]
            if not any(_same(value, neutral) for neutral in rule.neutral):
                raise error(f"'{param}' is not supported by this server: {rule.why}", param)
        elif name not in names:
            raise error(f"Unrecognized request argument supplied: '{param}'.", param)


def declared(serializer_class: type[serializers.Serializer], refused: Mapping[str, Refused]) -> set[str]:
    """Every parameter name a protocol's serializer takes (honoured ones) plus its refused ones."""
    return set(serializer_class().fields) | set(refused)


def parameter_table(
    serializer_class: type[serializers.Serializer],
    refused: Mapping[str, Refused],
    *,
    notes: Mapping[str, str] | None = None,
) -> str:
    """A Markdown table: each parameter, honoured or refused (400), and a note."""
    notes = notes or {}
    rows = ["| parameter | | note |", "|---|---|---|"]
    for name in sorted(declared(serializer_class, refused)):
        if name in refused:
            neutral = ", ".join(_json(value) for value in refused[name].neutral)
            rows.append(f"| `{name}` | refused (400) | {refused[name].why}; accepted as {neutral} |")
        else:
            rows.append(f"| `{name}` | honoured | {notes.get(name, '')} |")
    return "\n".join(rows)


def _json(value: Any) -> str:
    return f"`{json.dumps(value)}`"
