"""Fixtures of the OpenAI shaping and streaming unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.core.redis import get_redis
from inference.streams import stream_key
from inference.versions.registry import ServedModel
from tests.conftest import TEST_MODEL_NAME


@pytest.fixture
def model(demo_model_dir: Path) -> ServedModel:
    return ServedModel(name=TEST_MODEL_NAME, path=demo_model_dir)


@pytest.fixture
def written() -> Iterator[list[str]]:
    """Job ids whose streams a test wrote: removed afterwards."""
    ids: list[str] = []
    yield ids
    if ids:
        get_redis().delete(*(stream_key(job_id) for job_id in ids))
