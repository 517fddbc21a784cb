"""A worker of model versions for the tests that need versions of their own: it serves the
names "versioned" and "remote" (SLUICE_WORKER_MODELS) from the version table only, with
small health thresholds; requests go through the shared live web server. One per session."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from config.processes import ServerProcess, free_port, wait_until, worker_process
from inference.core.redis import get_redis
from inference.models import Job, ModelVersion

if TYPE_CHECKING:  # tests.conftest imports this module's fixtures
    from tests.conftest import ApiUser, Live

NAME, REMOTE = "versioned", "remote"
#: The versions worker's own /metrics port (SLUICE_WORKER_METRICS_PORT), set when it starts.
metrics_port = 0
#: The file behind the worker's SLUICE_TEST_UPSTREAM_KEY_FILE (an upstream key as a mounted
#: secret: a version names the variable SLUICE_TEST_UPSTREAM_KEY in ``api_key_env``).
upstream_key_file = Path()


def heartbeat_versions() -> dict[str, dict[str, Any]]:
    client = get_redis()
    found: dict[str, dict[str, Any]] = {}
    for key in client.scan_iter(match="sluice:worker:versions-worker*"):
        raw = client.get(key)
        if raw:
            for version in json.loads(raw).get("versions", []):
                found[version["key"]] = version
    return found


@pytest.fixture(scope="session")
def versions_worker(
    live: Live, test_database_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    from tests.conftest import child_env

    log_dir = tmp_path_factory.mktemp("versions-logs")
    global metrics_port, upstream_key_file
    metrics_port = free_port()
    upstream_key_file = log_dir / "upstream-key"
    upstream_key_file.write_text("")
    env = child_env(
        test_database_url,
        demo_model_dir,
        # Serves only versions from the table: no settings version for these names.
        SLUICE_WORKER_MODELS=f"{NAME},{REMOTE}",
        SLUICE_WORKER_SYNC_S="0.5",
        SLUICE_REGISTRY_CACHE_S="0.5",
        SLUICE_VERSION_MIN_SAMPLES="4",
        SLUICE_BREAKER_MIN_SAMPLES="4",
        SLUICE_BREAKER_COOLDOWN_S="120",
        SLUICE_TGI_RETRIES="3",
        # Job-level retries after a transient failure: 0.2 s, 0.4 s ... (1 s, 2 s ... by default).
        SLUICE_RETRY_BACKOFF_S="0.2",
        SLUICE_TGI_BACKOFF_S="0.2",
        SLUICE_TGI_TIMEOUT_S="5",
        SLUICE_WORKER_METRICS_PORT=str(metrics_port),
        # openai versions: a dead replica is out after 2 failures, back (half-open) after 2 s.
        SLUICE_UPSTREAM_FAILURES="2",
        SLUICE_UPSTREAM_COOLDOWN_S="2",
        SLUICE_UPSTREAM_PROBE_S="0.5",
        SLUICE_TEST_UPSTREAM_KEY_FILE=str(upstream_key_file),
    )
    worker = worker_process(env, model=NAME, name="versions-worker", log_dir=log_dir).start()
    wait_until(
        lambda: any(get_redis().scan_iter(match="sluice:worker:versions-worker*")),
        timeout=60,
        what="the worker",
    )
    yield worker
    worker.stop()


@pytest.fixture
def clean_versions(versions_worker: ServerProcess, transactional_db: None) -> Iterator[None]:
    yield
    # The next test starts with no versions: the worker unloads what it had.
    ModelVersion.objects.all().delete()
    for pattern in ("sluice:vstats:*", "sluice:breaker:*", "sluice:breaker-opened:*", "sluice:upstream:*"):
        for key in get_redis().scan_iter(match=pattern):
            get_redis().delete(key)
    wait_until(lambda: not heartbeat_versions(), timeout=30, what="the worker to unload every version")


def create(
    label: str, path: Path | str, *, status: str = "stable", weight: int = 100, name: str = NAME, **extra: Any
) -> ModelVersion:
    return ModelVersion.objects.create(
        served_name=name, label=label, path=str(path), status=status, traffic_weight=weight, **extra
    )


def loaded(version: ModelVersion, *, ok: bool = True) -> None:
    key = f"{version.served_name}@{version.label}"
    wait_until(
        lambda: key in heartbeat_versions() and (not ok or not heartbeat_versions()[key]["error"]),
        timeout=60,
        what=f"{key} to be loaded",
    )


def complete(live: Live, user: ApiUser, model: str = NAME, **body: Any) -> httpx.Response:
    payload = {"model": model, "prompt": "The river", "max_tokens": 6, **body}
    return httpx.post(f"{live.base_url}/v1/completions", json=payload, headers=user.headers, timeout=60)


def submit_job(live: Live, user: ApiUser, *, max_tokens: int, model: str = REMOTE) -> dict[str, Any]:
    """A long generation (``ignore_eos``) as a native job, left running."""
    payload = {"model": model, "prompt": "Once", "max_tokens": max_tokens, "ignore_eos": True}
    return dict(httpx.post(f"{live.base_url}/api/v1/jobs", json=payload, headers=user.headers).json())


def job_of(response: httpx.Response) -> Job:
    return Job.objects.get(id=response.json()["id"].removeprefix("cmpl-"))


def broken_model_dir(tmp_path: Path, demo_model_dir: Path) -> Path:
    """The demo model with corrupt weights: requests validate (tokenizer, template), the
    worker cannot load it."""
    broken = tmp_path / "broken-model"
    shutil.copytree(demo_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00 these are not safetensors " * 64)
    return broken
