"""A worker loads each version on a thread of its own that ends with the load, so the
engine thread is the only thread of the process left holding torch's OpenMP pool (a second
live pool makes libgomp stop spinning between ops: the forward ran about 2x slower)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from inference.backends.base import ModelBackend
from inference.batching import SequenceRequest
from inference.sampling_params import SamplingParams
from inference.versions.registry import ServedModel
from inference.worker import backends, loading


def test_on_own_thread_returns_what_the_function_returns_from_a_thread_that_has_ended() -> None:
    ran_on: list[threading.Thread] = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 42

    assert loading.on_own_thread(work, name="probe") == 42
    assert ran_on[0] is not threading.current_thread()
    assert ran_on[0].name == "probe"
    assert not ran_on[0].is_alive()


def test_on_own_thread_raises_the_functions_exception_on_the_callers_thread() -> None:
    def fail() -> None:
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        loading.on_own_thread(fail, name="probe")


def test_a_version_is_loaded_and_warmed_up_off_the_callers_thread_and_then_serves(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded_on: list[threading.Thread] = []
    real_load = backends.build_backend

    def load_recording_thread(model: ServedModel, *, worker: str = "") -> ModelBackend:
        loaded_on.append(threading.current_thread())
        return real_load(model, worker=worker)

    monkeypatch.setattr(backends, "build_backend", load_recording_thread)
    loaded = loading.load_version(ServedModel(name="own-thread", path=demo_model_dir))
    try:
        assert loaded.error == ""
        assert loaded.engine is not None
        (thread,) = loaded_on
        assert thread is not threading.current_thread()
        assert thread.name == "load-own-thread@default"
        assert not thread.is_alive()
        # The engine thread, the one that runs the forward passes, still serves the version.
        handle = loaded.engine.submit(
            SequenceRequest(
                key="own-thread-1",
                prompt_ids=[1, 2, 3],
                params=SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
            )
        )
        assert handle.wait(60)
        assert handle.result is not None
        assert handle.result.error is None
        assert handle.result.completion_tokens == 4
    finally:
        loaded.stop()


def test_a_version_that_fails_to_load_keeps_its_error(tmp_path: Path) -> None:
    loaded = loading.load_version(ServedModel(name="missing", path=tmp_path / "nothing-here"))
    assert loaded.engine is None
    assert loaded.error
