"""schemathesis (unchanged) against the live server's own OpenAPI schema: generated requests
for every operation, bounded, and no answer may be a server error. The probes are left out:
their 503 is an answer ("not ready"), not a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ApiUser, Live

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_no_server_errors_on_generated_requests(live: Live, api_user: ApiUser, tmp_path: Path) -> None:
    executable = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(executable), "run", f"{live.base_url}/api/schema/",
            "--header", f"Authorization: Bearer {api_user.key}",
            "--checks", "not_a_server_error",
            "--max-examples", "12",
            "--phases", "examples,fuzzing",
            "--exclude-path", "/readyz",
            "--exclude-path", "/health",
            "--request-timeout", "120",
            "--workers", "2",
            "--generation-deterministic",  # the same cases on every run: CI does not flake on luck
        ],
        capture_output=True, text=True, timeout=540, check=False, cwd=tmp_path,
    )  # fmt: skip
    report = result.stdout[-6000:]
    assert result.returncode == 0, report
    assert "Server error" not in report
