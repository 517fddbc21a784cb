"""System tools a test needs (Debian's chromium, chromium-driver, promtool; `make install`
installs them). Missing on a developer's machine: the test skips and says which and why.
Missing under CI=true: the test fails, so a run can never pass without running it."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tools(*names: str) -> list[str]:
    """The paths of the named executables, or skip (fail under CI=true) naming the missing."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        why = f"{', '.join(missing)} not installed (make install installs Debian's chromium, chromium-driver, prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    return [path for path in found.values() if path is not None]
