"""Session-wide real parts: a tiny trained demo model, a random-weight model, and a live
Sluice (uvicorn + Celery worker subprocesses) on the embedded Postgres and Valkey that the
test settings start (config/settings/test.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings

from config.env import BASE_DIR
from config.processes import (
    ServerProcess,
    embeddings_worker_process,
    free_port,
    wait_ready,
    web_process,
    worker_process,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

TEST_MODEL_NAME = "sluice-test"
CACHE_DIR = BASE_DIR / "var" / "test-cache"


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The real demo-model builder with a tiny spec, cached by its fingerprint (corpus + spec)
    across local runs. Bounded by steps (about 20 s on an idle 2-core machine), not by time: a
    busy machine trained fewer steps and a model that ended its answers early, which some
    tests' expectations (stop strings taken from its output, full-length answers) depend on."""
    from inference.backends.demo_model import DemoModelSpec, build_demo_model

    spec = DemoModelSpec.tiny(budget_seconds=600.0, max_steps=400)
    out = CACHE_DIR / "models" / "tiny-demo"
    build_demo_model(out, spec, threads=0)
    return out


@pytest.fixture(scope="session")
def random_model_dir(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights, grouped-query attention, the demo tokenizer: near-uniform logits make
    greedy decoding sensitive to any cache or mask mistake."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("random-model")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        shutil.copy(demo_model_dir / name, out / name)
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=[4, 0],
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _serve_test_model(settings: object, demo_model_dir: Path) -> None:
    settings.SLUICE_MODEL_PATH = str(demo_model_dir)  # type: ignore[attr-defined]
    settings.SLUICE_MODEL_NAME = TEST_MODEL_NAME  # type: ignore[attr-defined]


@dataclass
class Live:
    base_url: str
    ws_url: str
    web: ServerProcess
    worker: ServerProcess
    env: dict[str, str]
    log_dir: Path
    embeddings: ServerProcess | None = None


def child_env(database_url: str, model_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "SLUICE_TEST_DATABASE_URL": database_url,
            "SLUICE_TEST_REDIS_URL": settings.REDIS_URL,
            "SLUICE_MODEL_PATH": str(model_dir),
            "SLUICE_MODEL_NAME": TEST_MODEL_NAME,
            # Workers of the suite serve only what their test gives them (not every name).
            "SLUICE_WORKER_MODELS": TEST_MODEL_NAME,
            "SLUICE_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            # Every generation of the suite's workers goes through the native attention kernel
            # where `make test` built it (`auto` does too; said here so that it stays so).
            "SLUICE_NATIVE_ATTENTION": "on",
            "SLUICE_MAX_BATCH_SIZE": "8",
            "SLUICE_JOB_LEASE_S": "3",
            "SLUICE_RECONCILE_INTERVAL_S": "1",
            "SLUICE_SSE_KEEPALIVE_S": "2",
            "SLUICE_WS_KEY_CHECK_S": "1",
            "SLUICE_METRICS_FLUSH_S": "1",
            "SLUICE_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def test_database_url(django_db_setup: None, django_db_blocker: object) -> str:
    """URL of the test database pytest-django created (subprocesses use it directly)."""
    from django.db import connection

    from config.settings.test import TEST_DATABASE_URL

    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        name = connection.settings_dict["NAME"]
    base, _, _ = TEST_DATABASE_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def live(
    test_database_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    log_dir = tmp_path_factory.mktemp("live-logs")
    env = child_env(test_database_url, demo_model_dir)
    port = free_port()
    web = web_process(env, port, log_dir).start()
    worker = worker_process(env, model=TEST_MODEL_NAME, name="live-worker", log_dir=log_dir).start()
    embeddings = embeddings_worker_process(env, name="live-embeddings", log_dir=log_dir).start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [web, worker, embeddings])
        yield Live(
            base_url=base_url,
            ws_url=f"ws://127.0.0.1:{port}",
            web=web,
            worker=worker,
            env=env,
            log_dir=log_dir,
            embeddings=embeddings,
        )
    finally:
        web.stop()
        worker.stop()
        embeddings.stop()


@dataclass
class ApiUser:
    user: User
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_api_user(transactional_db: None) -> Iterator[Callable[..., ApiUser]]:
    """Users with API keys, committed so that the live server's processes see them. At the
    end of the test, the live servers finish (or cancel) its work before the flush."""
    from django.contrib.auth.models import User

    from gateway.services import apikey_create
    from tests.support.quiesce import quiesce

    counter = iter(range(10_000))

    def make(username: str | None = None) -> ApiUser:
        user = User.objects.create(username=username or f"user{next(counter)}")
        return ApiUser(user=user, key=apikey_create(user=user, name="test").raw_key)

    yield make
    quiesce()


@pytest.fixture
def api_user(make_api_user: Callable[..., ApiUser]) -> ApiUser:
    return make_api_user("alice")


# The versions worker (a session fixture: one for every module that needs versions).
from tests.support.versions import clean_versions, versions_worker  # noqa: E402, F401
