"""Readiness per served model, and workers that take only the queues of what they serve."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config.processes import wait_until, worker_process
from inference.core.redis import get_redis
from inference.models import ModelVersion
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live, child_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def broken_version(live: Live, transactional_db: None) -> Iterator[ModelVersion]:
    version = ModelVersion.objects.create(
        served_name="broken", label="v1", path="/nonexistent", status="stable"
    )
    yield version
    ModelVersion.objects.filter(pk=version.pk).delete()


def test_one_broken_model_does_not_make_the_gateway_unready(
    live: Live, api_user: ApiUser, broken_version: ModelVersion
) -> None:
    def ready() -> dict[str, object]:
        return dict(httpx.get(f"{live.base_url}/readyz", timeout=10).json())

    wait_until(lambda: "broken" in ready()["checks"]["models"], timeout=30, what="readyz to list the version")  # type: ignore[index]
    response = httpx.get(f"{live.base_url}/readyz", timeout=10)
    assert response.status_code == 200
    models = response.json()["checks"]["models"]
    assert models[TEST_MODEL_NAME] == "ok" and models["broken"] == "no worker"
    assert httpx.get(f"{live.base_url}/readyz?model=broken", timeout=10).status_code == 503
    assert httpx.get(f"{live.base_url}/readyz?model={TEST_MODEL_NAME}", timeout=10).status_code == 200


def test_a_worker_for_another_name_leaves_the_default_models_queue(
    live: Live, test_database_url: str, demo_model_dir: Path, tmp_path: Path
) -> None:
    from config.celery import app

    env = child_env(test_database_url, demo_model_dir, SLUICE_WORKER_MODELS="solo")
    # Started the way a careless `celery -A config worker -Q sluice.model.<default>` would be.
    worker = worker_process(env, model=TEST_MODEL_NAME, name="solo-worker", log_dir=tmp_path).start()
    hostname = f"solo-worker@{socket.gethostname()}"
    try:

        def queues() -> set[str]:
            found = app.control.inspect(destination=[hostname], timeout=2).active_queues() or {}
            return {queue["name"] for queue in found.get(hostname, [])}

        wait_until(
            lambda: "sluice.model.solo" in queues(), timeout=90, interval=0.5, what="the worker's queues"
        )
        assert f"sluice.model.{TEST_MODEL_NAME}" not in queues()
        beat = next(
            json.loads(get_redis().get(key) or "{}")
            for key in get_redis().scan_iter(match="sluice:worker:solo-worker*")
        )
        assert TEST_MODEL_NAME not in beat.get("models", [])
    finally:
        worker.stop()
