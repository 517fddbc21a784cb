"""An operator's own classifier, as `SLUICE_GUARD_KINDS`/a policy's "classifier" guard loads it
(imported by the live web server from the project directory)."""

from __future__ import annotations


class ShoutingClassifier:
    """Scores text by its share of upper-case letters (a stand-in for a real model)."""

    def score(self, text: str) -> float:
        letters = [c for c in text if c.isalpha()]
        return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0
