"""Which series the console draws: the whole fleet, one served name, or one version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """Which series the charts draw: the whole fleet, one served name, or one version."""

    model: str = ""
    version: str = ""

    @classmethod
    def parse(cls, value: str) -> Scope:
        model, _, version = (value or "").partition("@")
        return cls(model=model, version=version)

    def matches(self, model: str, version: str) -> bool:
        return (not self.model or model == self.model) and (not self.version or version == self.version)

    def labels(self, offset: int = 1) -> Callable[[list[str]], bool]:
        """A match on field parts whose labels at ``offset`` are (model, version)."""

        def match(parts: list[str]) -> bool:
            if len(parts) < offset + 2:
                return not self.model
            return self.matches(parts[offset], parts[offset + 1])

        return match

    def __str__(self) -> str:
        return f"{self.model}@{self.version}" if self.version else self.model
