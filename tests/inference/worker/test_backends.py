"""The backend registry: a version's kind picks its builder; an unknown kind is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference.versions.registry import ServedModel
from inference.worker import backends


def test_every_kind_a_version_may_name_has_a_builder() -> None:
    from inference.models.versions import Backend

    assert set(backends.BUILDERS) == {choice.value for choice in Backend}


def test_an_unknown_kind_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'vllm' \(known: local, openai, tgi\)"):
        backends.build_backend(ServedModel(name="x", path=tmp_path, backend="vllm"))


def test_a_registered_builder_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[str, str]] = []
    sentinel = object()

    def probe(model: ServedModel, worker: str) -> Any:
        built.append((model.name, worker))
        return sentinel

    monkeypatch.setitem(backends.BUILDERS, "probe", probe)
    assert (
        backends.build_backend(ServedModel(name="m", path=tmp_path, backend="probe"), worker="w1") is sentinel
    )
    assert built == [("m", "w1")]
