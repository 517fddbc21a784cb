"""The engine with a real (tiny) torch model: many sequences in one batch, each with the
result it would have had alone."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from inference.backends.torch_local import TorchCausalLMBackend
from inference.batching import FinishReason, SequenceRequest
from inference.engine import Engine, SequenceResult, StepEvent
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


class RecordingSink:
    """Collects what the engine streams; can report sequences as cancelled."""

    def __init__(self) -> None:
        self.events: dict[str, list[StepEvent]] = defaultdict(list)
        self.cancel: set[str] = set()
        self.lock = threading.Lock()

    def publish(
        self, events: Sequence[StepEvent], watch: Sequence[tuple[str, dict[str, Any]]]
    ) -> dict[str, str]:
        with self.lock:
            for event in events:
                self.events[event.key].append(event)
            return {key: "cancelled" for key, _ in watch if key in self.cancel}


def make_backend(model_dir: Path, max_batch_size: int = 16) -> TorchCausalLMBackend:
    info = ModelInfo("m", model_dir)
    return TorchCausalLMBackend(
        model_dir, threads=1, max_batch_size=max_batch_size, eos_token_ids=[], vocab_decode=info.decode
    )


@pytest.fixture(scope="module")
def backend(random_model_dir: Path) -> TorchCausalLMBackend:
    return make_backend(random_model_dir)


@pytest.fixture
def engine(backend: TorchCausalLMBackend) -> Iterator[tuple[Engine, RecordingSink]]:
    sink = RecordingSink()
    eng = Engine(backend, sink, max_batch_size=16, max_batch_tokens=100_000).start()
    yield eng, sink
    eng.stop()
    assert backend.batch_keys == []  # every sequence left the batch


def prompt(i: int, length: int) -> list[int]:
    return [(7 * i + 3 * j) % 1000 + 10 for j in range(length)]


def run_alone(backend: TorchCausalLMBackend, ids: list[int], params: SamplingParams, steps: int) -> list[int]:
    out = backend.add(["solo"], [ids], [params])["solo"]
    assert not isinstance(out, Exception)
    tokens = [out.token_id]
    for _ in range(steps - 1):
        step = backend.step()["solo"]
        assert not isinstance(step, Exception)
        tokens.append(step.token_id)
    backend.remove(["solo"])
    return tokens


def wait(handles: list[Any], timeout: float = 60) -> list[SequenceResult]:
    for handle in handles:
        assert handle.wait(timeout), f"{handle.key} did not finish"
    return [h.result for h in handles]


def test_mixed_lengths_joining_mid_flight_match_solo_runs(
    engine: tuple[Engine, RecordingSink], backend: TorchCausalLMBackend
) -> None:
    eng, sink = engine
    lengths = [3, 40, 11, 90, 1, 25]
    max_new = [24, 5, 30, 12, 24, 17]
    handles = []
    for i, (length, new) in enumerate(zip(lengths, max_new, strict=True)):
        params = SamplingParams(max_tokens=new, temperature=0.0)
        handles.append(eng.submit(SequenceRequest(key=f"s{i}", prompt_ids=prompt(i, length), params=params)))
        time.sleep(0.01 * i)  # later sequences join a batch that is already decoding
    results = wait(handles)
    for i, result in enumerate(results):
        expected = run_alone(
            backend,
            prompt(i, lengths[i]),
            SamplingParams(max_tokens=max_new[i], temperature=0),
            max_new[i],
        )
        assert result.finish_reason is FinishReason.LENGTH
        assert result.token_ids == expected, f"sequence {i} differs from its solo run"
        assert result.completion_tokens == max_new[i]
        assert result.prompt_tokens == lengths[i]
        # What was streamed is exactly the result: same ids, same text, one entry per step.
        streamed = sink.events[f"s{i}"]
        assert [t for e in streamed for t in e.token_ids] == result.token_ids
        assert "".join(e.text for e in streamed) == result.text
        assert all(len(e.token_ids) == 1 for e in streamed)


def test_seeded_sampling_is_reproducible_in_a_batch(
    engine: tuple[Engine, RecordingSink], backend: TorchCausalLMBackend
) -> None:
    eng, _ = engine
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, top_k=50, seed=42)
    alone = run_alone(backend, prompt(1, 12), params, 20)
    noise = [
        eng.submit(
            SequenceRequest(
                key=f"n{i}", prompt_ids=prompt(i + 5, 9), params=SamplingParams(max_tokens=20, seed=i)
            )
        )
        for i in range(5)
    ]
    seeded = eng.submit(SequenceRequest(key="seeded", prompt_ids=prompt(1, 12), params=params))
    results = wait([*noise, seeded])
    assert results[-1].token_ids == alone
    other = run_alone(backend, prompt(1, 12), SamplingParams(max_tokens=20, temperature=0.9, seed=43), 20)
    assert other != alone  # the seed matters


def test_cancel_mid_flight_stops_one_sequence_only(engine: tuple[Engine, RecordingSink]) -> None:
    eng, sink = engine
    long = [
        eng.submit(
            SequenceRequest(
                key=f"c{i}", prompt_ids=prompt(i, 8), params=SamplingParams(max_tokens=150, temperature=0)
            )
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 30
    while len(sink.events["c1"]) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    eng.cancel("c1")
    results = wait(long)
    assert results[1].finish_reason is FinishReason.CANCELLED
    assert 5 <= results[1].completion_tokens < 150
    assert [r.finish_reason for r in (results[0], results[2])] == [FinishReason.LENGTH, FinishReason.LENGTH]


def test_cancel_flag_from_the_sink_stops_within_a_step(engine: tuple[Engine, RecordingSink]) -> None:
    eng, sink = engine
    handle = eng.submit(
        SequenceRequest(
            key="flagged", prompt_ids=prompt(3, 8), params=SamplingParams(max_tokens=200, temperature=0)
        )
    )
    deadline = time.monotonic() + 30
    while len(sink.events["flagged"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.002)
    with sink.lock:
        sink.cancel.add("flagged")
        seen = len(sink.events["flagged"])
    (result,) = wait([handle])
    assert result.finish_reason is FinishReason.CANCELLED
    # The flag is read in the same round trip as each step's tokens: at most one more step.
    assert len(sink.events["flagged"]) <= seen + 1


def test_stop_string_ends_the_sequence(
    engine: tuple[Engine, RecordingSink], backend: TorchCausalLMBackend
) -> None:
    eng, _ = engine
    ids = prompt(4, 10)
    full = backend.decode(run_alone(backend, ids, SamplingParams(max_tokens=30, temperature=0), 30))
    stop = full[10:13]
    assert stop and stop in full
    handle = eng.submit(
        SequenceRequest(
            key="stopper",
            prompt_ids=ids,
            params=SamplingParams(max_tokens=30, temperature=0, stop=(stop,)),
        )
    )
    (result,) = wait([handle])
    assert result.finish_reason is FinishReason.STOP
    assert result.stopped_by_string
    assert result.text == full[: full.index(stop)]


def test_stop_token_ids_end_the_sequence_on_that_token(
    engine: tuple[Engine, RecordingSink], backend: TorchCausalLMBackend
) -> None:
    """vLLM's stop_token_ids: the token is generated and counted, its text left out."""
    eng, _ = engine
    ids = prompt(6, 9)
    tokens = run_alone(backend, ids, SamplingParams(max_tokens=20, temperature=0), 20)
    stop_id = tokens[4]
    at = tokens.index(stop_id)
    handles = [
        eng.submit(
            SequenceRequest(
                key=f"stop-token-{include}",
                prompt_ids=ids,
                params=SamplingParams(
                    max_tokens=20, temperature=0, stop_token_ids=(stop_id,), include_stop=include
                ),
            )
        )
        for include in (False, True)
    ]
    left_out, kept = wait(handles)
    for result in (left_out, kept):
        assert result.finish_reason is FinishReason.STOP and result.token_ids == tokens[: at + 1]
        assert result.completion_tokens == at + 1
    assert left_out.text == backend.decode(tokens[:at])
    assert kept.text == backend.decode(tokens[: at + 1])


def test_stop_strings_wait_for_min_tokens(
    engine: tuple[Engine, RecordingSink], backend: TorchCausalLMBackend
) -> None:
    eng, _ = engine
    ids = prompt(4, 10)
    tokens = run_alone(backend, ids, SamplingParams(max_tokens=30, temperature=0), 30)
    full = backend.decode(tokens)
    stop = full[2:5]  # within the first tokens' text
    assert stop and full.index(stop) < len(backend.decode(tokens[:8]))
    handle = eng.submit(
        SequenceRequest(
            key="late-stop",
            prompt_ids=ids,
            params=SamplingParams(max_tokens=30, temperature=0, stop=(stop,), min_tokens=8),
        )
    )
    (result,) = wait([handle])
    # The early occurrence did not count; a later one may (then the text ends before it).
    assert len(result.token_ids) >= 8
    assert result.text.startswith(backend.decode(tokens[:8]).removesuffix(stop))
    assert len(result.text) > full.index(stop)


def test_deadline_expiry(backend: TorchCausalLMBackend) -> None:
    now = [1000.0]
    sink = RecordingSink()
    eng = Engine(backend, sink, max_batch_size=8, max_batch_tokens=100_000, clock=lambda: now[0]).start()
    try:
        doomed = eng.submit(
            SequenceRequest(
                key="doomed",
                prompt_ids=prompt(1, 5),
                params=SamplingParams(max_tokens=500, temperature=0),
                deadline=1005.0,
            )
        )
        fine = eng.submit(
            SequenceRequest(
                key="fine", prompt_ids=prompt(2, 5), params=SamplingParams(max_tokens=40, temperature=0)
            )
        )
        while len(sink.events["doomed"]) < 3:
            time.sleep(0.002)
        now[0] = 1010.0
        doomed_result, fine_result = wait([doomed, fine])
    finally:
        eng.stop()
    assert doomed_result.finish_reason is FinishReason.DEADLINE
    assert doomed_result.error == "deadline exceeded"
    assert fine_result.finish_reason is FinishReason.LENGTH
    assert fine_result.completion_tokens == 40


def test_a_failing_sequence_fails_alone(
    engine: tuple[Engine, RecordingSink], backend: TorchCausalLMBackend
) -> None:
    eng, _ = engine
    good = [
        eng.submit(
            SequenceRequest(
                key=f"g{i}", prompt_ids=prompt(i, 6), params=SamplingParams(max_tokens=10, temperature=0)
            )
        )
        for i in range(3)
    ]
    bad = eng.submit(
        SequenceRequest(
            key="bad", prompt_ids=[5, 6, 10_000_000], params=SamplingParams(max_tokens=10, temperature=0)
        )
    )
    results = wait([*good, bad])
    assert results[-1].finish_reason is FinishReason.ERROR
    assert "outside the vocabulary" in (results[-1].error or "")
    for i, result in enumerate(results[:-1]):
        assert result.finish_reason is FinishReason.LENGTH
        assert result.token_ids == run_alone(
            backend, prompt(i, 6), SamplingParams(max_tokens=10, temperature=0), 10
        )


def test_resume_continues_where_an_earlier_attempt_stopped(
    engine: tuple[Engine, RecordingSink], backend: TorchCausalLMBackend
) -> None:
    eng, sink = engine
    ids = prompt(9, 14)
    full = run_alone(backend, ids, SamplingParams(max_tokens=30, temperature=0), 30)
    done = full[:12]
    handle = eng.submit(
        SequenceRequest(
            key="resumed",
            prompt_ids=ids,
            params=SamplingParams(max_tokens=30, temperature=0),
            resume_ids=done,
            resume_text=backend.decode(done),
        )
    )
    (result,) = wait([handle])
    assert result.token_ids == full[12:]
    assert result.completion_tokens == 30
    assert [t for e in sink.events["resumed"] for t in e.token_ids] == full[12:]


def test_batch_size_limit_queues_the_rest(backend: TorchCausalLMBackend) -> None:
    sink = RecordingSink()
    eng = Engine(backend, sink, max_batch_size=2, max_batch_tokens=100_000).start()
    seen_batch: list[int] = []

    class Observer:
        def on_step(self, *, batch_size: int, new_tokens: int, seconds: float, prefill: bool) -> None:
            if not prefill:
                seen_batch.append(batch_size)

        def on_finish(self, result: SequenceResult) -> None:
            pass

    eng.observer = Observer()
    try:
        handles = [
            eng.submit(
                SequenceRequest(
                    key=f"q{i}",
                    prompt_ids=prompt(i, 4),
                    params=SamplingParams(max_tokens=8, temperature=0),
                )
            )
            for i in range(5)
        ]
        results = wait(handles)
    finally:
        eng.stop()
    assert all(r.finish_reason is FinishReason.LENGTH for r in results)
    assert max(seen_batch) == 2


def test_eos_ends_a_sequence_unless_ignored(random_model_dir: Path) -> None:
    backend = make_backend(random_model_dir)
    ids = prompt(6, 10)
    solo = run_alone(backend, ids, SamplingParams(max_tokens=30, temperature=0), 30)
    eos = solo[5]
    first_eos = solo.index(eos)
    backend.eos_token_ids = frozenset({eos})
    eng = Engine(backend, RecordingSink(), max_batch_size=4, max_batch_tokens=10_000).start()
    try:
        stops, ignores = wait(
            [
                eng.submit(
                    SequenceRequest(
                        key="stops", prompt_ids=ids, params=SamplingParams(max_tokens=30, temperature=0)
                    )
                ),
                eng.submit(
                    SequenceRequest(
                        key="ignores",
                        prompt_ids=ids,
                        params=SamplingParams(max_tokens=30, temperature=0, ignore_eos=True),
                    )
                ),
            ]
        )
    finally:
        eng.stop()
    assert stops.finish_reason is FinishReason.STOP and not stops.stopped_by_string
    assert stops.token_ids == solo[: first_eos + 1]  # the end-of-sequence token is counted, not shown
    assert ignores.finish_reason is FinishReason.LENGTH
    assert ignores.token_ids == solo
