"""Pure scheduling and text bookkeeping (no Django, no torch)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from inference.batching import IncrementalDecoder, Scheduler, SequenceRequest, StopMatcher
from inference.sampling_params import SamplingParams


def req(key: str, prompt: int = 4, max_new: int = 4, priority: int = 0) -> SequenceRequest:
    return SequenceRequest(
        key=key,
        prompt_ids=list(range(prompt)),
        params=SamplingParams(max_tokens=max_new),
        priority=priority,
    )


class TestScheduler:
    def test_admits_up_to_batch_size_in_arrival_order(self) -> None:
        scheduler = Scheduler(max_batch_size=3, max_batch_tokens=10_000)
        for key in "abcde":
            scheduler.enqueue(req(key))
        assert [r.key for r in scheduler.admit(running=1, running_tokens=0)] == ["a", "b"]
        assert [r.key for r in scheduler.admit(running=0, running_tokens=0)] == ["c", "d", "e"]
        assert len(scheduler) == 0

    def test_token_budget_counts_prompt_and_max_new_tokens(self) -> None:
        scheduler = Scheduler(max_batch_size=10, max_batch_tokens=20)
        scheduler.enqueue(req("a", prompt=6, max_new=4))  # 10
        scheduler.enqueue(req("b", prompt=6, max_new=4))  # 10
        scheduler.enqueue(req("c", prompt=1, max_new=1))  # 2
        assert [r.key for r in scheduler.admit(running=0, running_tokens=0)] == ["a", "b"]
        assert scheduler.admit(running=2, running_tokens=20) == []

    def test_head_of_line_is_not_overtaken(self) -> None:
        scheduler = Scheduler(max_batch_size=10, max_batch_tokens=20)
        scheduler.enqueue(req("big", prompt=15, max_new=4))
        scheduler.enqueue(req("small", prompt=1, max_new=1))
        # 19 tokens do not fit next to 5 running ones; the small one must not jump the queue.
        assert scheduler.admit(running=1, running_tokens=5) == []

    def test_oversized_sequence_runs_alone(self) -> None:
        scheduler = Scheduler(max_batch_size=4, max_batch_tokens=10)
        scheduler.enqueue(req("huge", prompt=50, max_new=50))
        assert scheduler.admit(running=1, running_tokens=1) == []
        assert [r.key for r in scheduler.admit(running=0, running_tokens=0)] == ["huge"]

    def test_priority_first_then_fifo(self) -> None:
        scheduler = Scheduler(max_batch_size=10, max_batch_tokens=10_000)
        scheduler.enqueue(req("low1", priority=0))
        scheduler.enqueue(req("high", priority=5))
        scheduler.enqueue(req("low2", priority=0))
        assert [r.key for r in scheduler.admit(running=0, running_tokens=0)] == ["high", "low1", "low2"]

    def test_remove_waiting(self) -> None:
        scheduler = Scheduler(max_batch_size=10, max_batch_tokens=10_000)
        scheduler.enqueue(req("a"))
        scheduler.enqueue(req("b"))
        removed = scheduler.remove("a")
        assert removed is not None and removed.key == "a"
        assert scheduler.remove("a") is None
        assert "a" not in scheduler
        assert [r.key for r in scheduler.admit(running=0, running_tokens=0)] == ["b"]

    def test_resumed_tokens_count_against_max_new_tokens(self) -> None:
        request = SequenceRequest(
            key="r", prompt_ids=[1, 2, 3], params=SamplingParams(max_tokens=10), resume_ids=[7, 8, 9, 10]
        )
        assert request.context_len == 7
        assert request.remaining_new_tokens == 6
        assert request.token_budget == 13


class TestStopMatcher:
    def test_no_stops_passes_text_through(self) -> None:
        matcher = StopMatcher([])
        assert matcher.feed("hello") == "hello"
        assert matcher.feed(" world") == " world"
        assert not matcher.stopped

    def test_stop_string_is_cut_and_not_emitted(self) -> None:
        matcher = StopMatcher(["END"])
        out = matcher.feed("abc E") + matcher.feed("N") + matcher.feed("D and more")
        assert out == "abc "
        assert matcher.stopped
        assert matcher.text == "abc "

    def test_partial_stop_is_held_then_released(self) -> None:
        matcher = StopMatcher(["\n\n"])
        assert matcher.feed("line\n") == "line"
        assert matcher.feed("x") == "\nx"
        assert not matcher.stopped

    def test_held_text_is_flushed_at_the_end(self) -> None:
        matcher = StopMatcher(["STOP"])
        assert matcher.feed("go ST") == "go "
        assert matcher.flush() == "ST"

    def test_earliest_of_several_stops_wins(self) -> None:
        matcher = StopMatcher(["world", "lo w"])
        assert matcher.feed("hello world") == "hel"

    def test_include_keeps_the_stop_string(self) -> None:
        """TGI's behaviour: the text up to and including the stop sequence."""
        matcher = StopMatcher(["END"], include=True)
        out = matcher.feed("abc E") + matcher.feed("N") + matcher.feed("D and more")
        assert out == "abc END"
        assert matcher.stopped and matcher.text == "abc END"

    @given(
        text=st.text(alphabet="abc\n", max_size=40),
        stop=st.text(alphabet="abc\n", min_size=1, max_size=4),
        cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    )
    def test_included_stop_whatever_the_chunking(self, text: str, stop: str, cuts: list[int]) -> None:
        points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
        matcher = StopMatcher([stop], include=True)
        out = "".join(matcher.feed(text[a:b]) for a, b in itertools.pairwise(points)) + matcher.flush()
        index = text.find(stop)
        assert out == (text if index == -1 else text[: index + len(stop)])

    @given(
        text=st.text(alphabet="abc\n", max_size=40),
        stop=st.text(alphabet="abc\n", min_size=1, max_size=4),
        cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    )
    def test_chunking_does_not_change_the_result(self, text: str, stop: str, cuts: list[int]) -> None:
        """However the text arrives, the emitted text is the text before the first stop."""
        points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
        matcher = StopMatcher([stop])
        out = "".join(matcher.feed(text[a:b]) for a, b in itertools.pairwise(points))
        out += matcher.flush()
        index = text.find(stop)
        assert out == (text if index == -1 else text[:index])


class TestIncrementalDecoder:
    def test_multibyte_character_split_across_tokens(self) -> None:
        # A byte-level tokenizer may split "é" (2 bytes) over two tokens.
        pieces = {1: b"caf", 2: b"\xc3", 3: b"\xa9", 4: b"!"}

        def decode(ids: object) -> str:
            return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")  # type: ignore[attr-defined]

        decoder = IncrementalDecoder(decode)
        deltas = [decoder.push(i) for i in (1, 2, 3, 4)]
        assert deltas == ["caf", "", "é", "!"]
        assert decoder.text == "café!"

    def test_flush_releases_an_incomplete_tail(self) -> None:
        pieces = {1: b"a", 2: b"\xc3"}

        def decode(ids: object) -> str:
            return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")  # type: ignore[attr-defined]

        decoder = IncrementalDecoder(decode)
        assert decoder.push(1) == "a"
        assert decoder.push(2) == ""
        assert decoder.flush() == "\ufffd"

    def test_real_tokenizer_round_trip(self, demo_model_dir: object) -> None:
        from pathlib import Path

        from inference.prompts import ModelInfo

        info = ModelInfo("m", Path(str(demo_model_dir)))
        text = "Rivers run to the sea — naïve café, 42 times!"
        ids = info.encode(text, add_special_tokens=False)
        decoder = IncrementalDecoder(info.decode)
        out = "".join(decoder.push(i) for i in ids) + decoder.flush()
        assert out == text


def test_prefill_budget_spreads_a_wave_over_steps() -> None:
    scheduler = Scheduler(max_batch_size=64, max_batch_tokens=100_000)
    for i in range(10):
        scheduler.enqueue(req(f"w{i}", prompt=64))
    waves = []
    running = 0
    while len(scheduler):
        admitted = scheduler.admit(running, 0, prefill_tokens=200)
        waves.append(len(admitted))
        running += len(admitted)
    assert waves == [3, 3, 3, 1]
    big = Scheduler(max_batch_size=4, max_batch_tokens=100_000)
    big.enqueue(req("huge", prompt=500))
    assert [r.key for r in big.admit(0, 0, prefill_tokens=200)] == ["huge"]  # never starves
