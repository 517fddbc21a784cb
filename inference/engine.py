# structure: one engine thread's loop (intake, admission, step, publish, finish) over state
# it alone owns; split, its invariants would span modules.
"""Continuous-batching engine: one per worker process, one thread, many sequences.

Every Celery task the worker holds hands its sequence to `Engine.submit` and waits on the
returned handle. The engine thread loops:

1. take new submissions and cancellations; expire sequences past their deadline;
2. admit waiting sequences that fit (`batching.Scheduler`) and hand them to the backend
   (the local backend prefills them in chunks inside the next steps, a remote one at once);
3. run one step: a token for every sequence in the batch (and prefill chunks of new ones);
4. publish each sequence's new text to its stream through the `TokenSink` (one round trip
   per step for the whole batch, which also reports cancel flags and lost leases);
5. complete the handles of sequences that finished; their slots are free for step 2.

No Django, Celery or torch here: the sink and the backend are injected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inference.backends.base import NO_TOKEN, ModelBackend, Sampled
from inference.batching import FinishReason, IncrementalDecoder, Scheduler, SequenceRequest, StopMatcher
from inference.guards import OutputGuards

logger = logging.getLogger(__name__)


@dataclass
class StepEvent:
    """New output of one sequence in one engine step (coalesced: one entry per step)."""

    key: str
    meta: dict[str, Any]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    completion_tokens: int
    #: Per token, its alternatives (only when the sequence asked for top_logprobs).
    top_logprobs: list[list[tuple[int, float]]] | None = None
    #: With the first token, when asked: (prompt token id, log-probability[, rank, alternatives])
    #: for the prompt.
    prompt_logprobs: list[tuple[Any, ...]] | None = None


class TokenSink(Protocol):
    def publish(
        self, events: Sequence[StepEvent], watch: Sequence[tuple[str, dict[str, Any]]]
    ) -> dict[str, str]:
        """Append events to their streams; return ``{key: "cancelled" | "lease_lost"}`` for
        the watched sequences that must stop."""


class NullSink:
    """A sink that streams nowhere (benchmarks of the raw engine, unit tests)."""

    def publish(
        self, events: Sequence[StepEvent], watch: Sequence[tuple[str, dict[str, Any]]]
    ) -> dict[str, str]:
        return {}


class EngineObserver(Protocol):
    def on_step(self, *, batch_size: int, new_tokens: int, seconds: float, prefill: bool) -> None: ...

    def on_finish(self, result: SequenceResult) -> None: ...


@dataclass
class SequenceResult:
    key: str
    finish_reason: FinishReason
    text: str  # emitted by this attempt (resumed text excluded)
    token_ids: list[int]
    logprobs: list[float]
    prompt_tokens: int
    completion_tokens: int  # including tokens resumed from an earlier attempt
    error: str | None = None
    #: The error is transient (an upstream that failed before the first token): retry the job.
    retryable: bool = False
    stopped_by_string: bool = False
    submitted_at: float = 0.0
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float = 0.0
    #: The replica that ran it (remote backends with several upstreams).
    served_by: str = ""


class SequenceHandle:
    """What a task thread holds while the engine works on its sequence."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._done = threading.Event()
        self.result: SequenceResult | None = None

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _complete(self, result: SequenceResult) -> None:
        self.result = result
        self._done.set()


@dataclass
class _Active:
    request: SequenceRequest
    handle: SequenceHandle
    decoder: IncrementalDecoder
    stops: StopMatcher
    submitted_at: float
    guards: OutputGuards | None = None
    admitted_at: float | None = None
    first_token_at: float | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[float] = field(default_factory=list)
    pending_top: list[list[tuple[int, float]]] = field(default_factory=list)
    pending_prompt: list[tuple[Any, ...]] | None = None
    pending_text: str = ""
    finish: FinishReason | None = None
    error: str | None = None
    retryable: bool = False
    served_by: str = ""
    #: Completion tokens as a remote upstream counted them (it sent text, not token ids).
    reported_tokens: int | None = None

    @property
    def completion_tokens(self) -> int:
        generated = len(self.token_ids) if self.reported_tokens is None else self.reported_tokens
        return len(self.request.resume_ids) + generated


class Engine:
    def __init__(
        self,
        backend: ModelBackend,
        sink: TokenSink | None = None,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 65536,
        max_prefill_tokens: int | None = None,
        observer: EngineObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "engine",
        guard_kinds: dict[str, str] | None = None,
    ) -> None:
        #: Guard kinds beyond the built-in ones (SLUICE_GUARD_KINDS), for output guards.
        self.guard_kinds = guard_kinds or {}
        self.backend = backend
        self.sink: TokenSink = sink or NullSink()
        self.scheduler = Scheduler(max_batch_size, max_batch_tokens)
        self.max_prefill_tokens = max_prefill_tokens
        self.observer = observer
        self.clock = clock
        self.name = name
        self._cv = threading.Condition()
        self._inbox: list[tuple[SequenceRequest, SequenceHandle, float]] = []
        self._cancel_requests: dict[str, FinishReason] = {}
        self._waiting: dict[str, _Active] = {}  # in the scheduler, not yet in the batch
        self._active: dict[str, _Active] = {}  # in the backend's batch
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.last_batch_size = 0

    # --- called from any thread ---------------------------------------------------------

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self.backend.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, request: SequenceRequest) -> SequenceHandle:
        """Hand a sequence to the engine (from a job's thread). The backend prepares what takes
        time (an output constraint's compilation) here, on the caller's thread."""
        handle = SequenceHandle(request.key)
        try:
            self.backend.prepare(request.params)
        except Exception as exc:  # a constraint that does not compile: this sequence only
            handle._complete(self._result_for_error(request, self.clock(), f"invalid request: {exc}"))
            return handle
        with self._cv:
            if self._stopping:
                raise RuntimeError("engine is stopping")
            self._inbox.append((request, handle, self.clock()))
            self._cv.notify_all()
        self.backend.wake()
        return handle

    def cancel(self, key: str, reason: FinishReason = FinishReason.CANCELLED) -> None:
        with self._cv:
            self._cancel_requests[key] = reason
            self._cv.notify_all()
        self.backend.wake()

    @property
    def load(self) -> dict[str, int]:
        return {"running": len(self._active), "waiting": len(self._waiting), "steps": self.steps}

    # --- engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while (
                    not self._stopping
                    and not self._inbox
                    and not self._cancel_requests
                    and not self._active
                    and not self._waiting
                ):
                    self._cv.wait()
                if self._stopping:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancel_requests = self._cancel_requests, {}
            try:
                self._iteration(inbox, cancels)
            except Exception:
                # A failure outside per-sequence isolation (the batch's forward pass, say)
                # fails every sequence in the batch; the engine itself keeps serving.
                logger.exception("engine iteration failed; failing the current batch")
                self._fail_all_active("engine error: the batch's forward pass failed")
        self._shutdown()

    def _iteration(
        self, inbox: list[tuple[SequenceRequest, SequenceHandle, float]], cancels: dict[str, FinishReason]
    ) -> None:
        for request, handle, submitted_at in inbox:
            self._accept(request, handle, submitted_at)
        for key, reason in cancels.items():
            self._mark(key, reason)
        self._expire_deadlines()
        self._retire_marked()

        admitted = self.scheduler.admit(len(self._active), self._active_tokens(), self.max_prefill_tokens)
        if admitted:
            self._prefill(admitted)
            self._publish_and_retire()
        if self._active:
            self._decode()
            self._publish_and_retire()
        elif self._waiting and not admitted:
            # Nothing runs and nothing could be admitted: only happens when waiting
            # sequences were all cancelled. Poll their cancel flags without spinning.
            self._publish_and_retire()
            with self._cv:
                self._cv.wait(timeout=0.05)

    def _accept(self, request: SequenceRequest, handle: SequenceHandle, submitted_at: float) -> None:
        key = request.key
        if key in self._active or key in self._waiting:
            handle._complete(self._result_for_error(request, submitted_at, "sequence is already running"))
            return
        try:
            decoder = IncrementalDecoder(self.backend.decode, [*request.prompt_ids, *request.resume_ids])
            stops = StopMatcher(request.params.stop, include=request.params.include_stop)
            if request.resume_text:
                stops.text = request.resume_text
                stops.emitted = len(request.resume_text)
            guards = (
                OutputGuards(request.params.output_guards, self.guard_kinds)
                if request.params.output_guards
                else None
            )
        except Exception as exc:  # bad stop strings or decoder state: this sequence only
            handle._complete(self._result_for_error(request, submitted_at, f"invalid request: {exc}"))
            return
        act = _Active(
            request=request,
            handle=handle,
            decoder=decoder,
            stops=stops,
            submitted_at=submitted_at,
            guards=guards,
        )
        if request.remaining_new_tokens <= 0 or request.context_len >= self.backend.context_length:
            act.finish = FinishReason.LENGTH
            self._complete(act)
            return
        self._waiting[key] = act
        self.scheduler.enqueue(request)

    def _result_for_error(self, request: SequenceRequest, submitted_at: float, error: str) -> SequenceResult:
        return SequenceResult(
            key=request.key,
            finish_reason=FinishReason.ERROR,
            text="",
            token_ids=[],
            logprobs=[],
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(request.resume_ids),
            error=error,
            submitted_at=submitted_at,
            finished_at=self.clock(),
        )

    def _active_tokens(self) -> int:
        return sum(act.request.token_budget for act in self._active.values())

    def _mark(self, key: str, reason: FinishReason, error: str | None = None) -> None:
        act = self._active.get(key) or self._waiting.get(key)
        if act is not None and act.finish is None:
            act.finish = reason
            act.error = error

    def _expire_deadlines(self) -> None:
        now = self.clock()
        for act in (*self._active.values(), *self._waiting.values()):
            deadline = act.request.deadline
            if deadline is not None and now >= deadline and act.finish is None:
                act.finish = FinishReason.DEADLINE
                act.error = "deadline exceeded"

    def _prefill(self, admitted: list[SequenceRequest]) -> None:
        now = self.clock()
        acts = [self._waiting.pop(request.key) for request in admitted]
        for act in acts:
            act.admitted_at = now
            self._active[act.request.key] = act
        started = time.perf_counter()
        results = self._add_isolated(acts)
        self._after_tokens(results, time.perf_counter() - started, prefill=True)

    def _add_isolated(self, acts: list[_Active]) -> dict[str, Sampled | Exception]:
        """Hand to the backend together; if that fails, one by one, so one bad sequence fails alone."""
        keys = [act.request.key for act in acts]
        tokens = [[*act.request.prompt_ids, *act.request.resume_ids] for act in acts]
        params = [act.request.params for act in acts]
        resumed = [len(act.request.resume_ids) for act in acts]
        try:
            return self.backend.enqueue(keys, tokens, params, resumed)
        except Exception:
            if len(acts) == 1:
                raise
            logger.warning("batched prefill failed; retrying sequences one by one", exc_info=True)
        results: dict[str, Sampled | Exception] = {}
        for key, ids, param, done in zip(keys, tokens, params, resumed, strict=True):
            try:
                results.update(self.backend.enqueue([key], [ids], [param], [done]))
            except Exception as exc:
                results[key] = exc
        return results

    def _decode(self) -> None:
        started = time.perf_counter()
        results = self.backend.step()
        self._after_tokens(results, time.perf_counter() - started, prefill=False)
        self.steps += 1

    def _after_tokens(self, results: dict[str, Sampled | Exception], seconds: float, prefill: bool) -> None:
        now = self.clock()
        self.last_batch_size = len(results)
        new_tokens = 0
        for key, sampled in results.items():
            act = self._active.get(key)
            if act is None or act.finish is not None:
                continue
            if isinstance(sampled, Exception):
                act.finish = FinishReason.ERROR
                act.error = f"{type(sampled).__name__}: {sampled}"
                act.retryable = bool(getattr(sampled, "retryable", False)) and not act.token_ids
                continue
            if sampled.token_id == NO_TOKEN:
                self._end_from_upstream(act, sampled)
                continue
            new_tokens += 1
            try:
                self._append_token(act, sampled, now)
            except Exception as exc:  # detokenizer/stop handling for this sequence only
                logger.exception("sequence %s failed while handling its output", key)
                act.finish = FinishReason.ERROR
                act.error = f"{type(exc).__name__}: {exc}"
        if self.observer is not None:
            self.observer.on_step(
                batch_size=len(results), new_tokens=new_tokens, seconds=seconds, prefill=prefill
            )

    def _end_from_upstream(self, act: _Active, sampled: Sampled) -> None:
        """A remote upstream ended the sequence (its own end of sequence, stop or limit)."""
        if sampled.completion_tokens is not None:
            act.reported_tokens = max(sampled.completion_tokens, len(act.token_ids))
        act.finish = FinishReason.LENGTH if sampled.final == "length" else FinishReason.STOP

    def _append_token(self, act: _Active, sampled: Sampled, now: float) -> None:
        if act.first_token_at is None:
            act.first_token_at = now
            act.served_by = self.backend.served_by(act.request.key)
        act.token_ids.append(sampled.token_id)
        act.logprobs.append(sampled.logprob)
        act.pending_ids.append(sampled.token_id)
        act.pending_logprobs.append(sampled.logprob)
        if act.request.params.top_logprobs:
            act.pending_top.append(list(sampled.top))
        if sampled.prompt_logprobs is not None:
            act.pending_prompt = list(zip(act.request.prompt_ids, sampled.prompt_logprobs, strict=False))
            if sampled.prompt_top is not None:
                # (id, logprob, rank, alternatives) from the second prompt token on.
                act.pending_prompt[1:] = [
                    (token_id, logprob, rank, list(top))
                    for (token_id, logprob), (rank, top) in zip(
                        act.pending_prompt[1:], sampled.prompt_top, strict=False
                    )
                ]
        params = act.request.params
        if sampled.token_id in self.backend.eos_token_ids and not params.ignore_eos:
            act.finish = FinishReason.STOP
            return
        if sampled.token_id in params.stop_token_ids:
            # Generated and counted; its text is left out unless asked for (as vLLM does).
            act.finish = FinishReason.STOP
            if not params.include_stop:
                return
        if sampled.final is not None:
            # The upstream (or a complete output constraint) ended here: this token's text is
            # the last (stop checks still run).
            act.finish = FinishReason.LENGTH if sampled.final == "length" else FinishReason.STOP
        piece = act.decoder.push(sampled.token_id) if sampled.text is None else sampled.text
        # Before min_tokens, stop strings do not stop (vLLM checks none before then).
        delta = act.stops.feed(piece, armed=act.completion_tokens >= params.min_tokens)
        if act.guards is not None:
            delta = act.guards.feed(delta)
            if act.guards.blocked:
                act.pending_text += delta
                act.finish = FinishReason.CONTENT_FILTER
                return
        act.pending_text += delta
        if act.stops.stopped:
            act.finish = FinishReason.STOP
        elif (
            act.completion_tokens >= act.request.params.max_new_tokens
            or act.request.context_len + len(act.token_ids) >= self.backend.context_length
        ):
            act.finish = FinishReason.LENGTH

    def _publish_and_retire(self) -> None:
        events: list[StepEvent] = []
        for act in self._active.values():
            if act.finish in (FinishReason.STOP, FinishReason.LENGTH) and not act.stops.stopped:
                # Release text held back for a stop string or an incomplete character.
                tail = act.stops.feed(act.decoder.flush()) + act.stops.flush()
                act.pending_text += act.guards.feed(tail) if act.guards is not None else tail
            if act.finish in (FinishReason.STOP, FinishReason.LENGTH) and act.guards is not None:
                act.pending_text += act.guards.flush()  # the tail the guards held back
                if act.guards.blocked:
                    act.finish = FinishReason.CONTENT_FILTER
            if act.finish in (FinishReason.CANCELLED, FinishReason.LEASE_LOST, FinishReason.ABORTED):
                continue  # nobody wants more output from these
            if act.pending_ids or act.pending_text:
                act.text += act.pending_text
                events.append(
                    StepEvent(
                        key=act.request.key,
                        meta=act.request.meta,
                        token_ids=act.pending_ids,
                        logprobs=act.pending_logprobs,
                        text=act.pending_text,
                        completion_tokens=act.completion_tokens,
                        top_logprobs=act.pending_top or None,
                        prompt_logprobs=act.pending_prompt,
                    )
                )
                act.pending_ids, act.pending_logprobs, act.pending_text = [], [], ""
                act.pending_top, act.pending_prompt = [], None
        watch = [
            (act.request.key, act.request.meta)
            for act in (*self._active.values(), *self._waiting.values())
            if act.finish is None
        ]
        if events or watch:
            for key, reason in self._publish(events, watch).items():
                self._mark(key, FinishReason.LEASE_LOST if reason == "lease_lost" else FinishReason.CANCELLED)
        self._retire_marked()

    def _publish(self, events: list[StepEvent], watch: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
        """Hand the step's output to the sink, retrying while the store is unreachable.

        Generation pauses rather than loses tokens: a sequence whose deadline passes while
        the store is down ends with DEADLINE once it is back.
        """
        delay = 0.05
        while True:
            try:
                return self.sink.publish(events, watch)
            except Exception:
                if self._stopping:
                    raise
                logger.warning("publishing tokens failed; retrying in %.2fs", delay, exc_info=True)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _retire_marked(self) -> None:
        done = [act for act in self._active.values() if act.finish is not None]
        if done:
            for act in done:
                act.served_by = act.served_by or self.backend.served_by(act.request.key)
            self.backend.remove([act.request.key for act in done])
            for act in done:
                del self._active[act.request.key]
                self._complete(act)
        for act in [act for act in self._waiting.values() if act.finish is not None]:
            del self._waiting[act.request.key]
            self.scheduler.remove(act.request.key)
            self._complete(act)

    def _complete(self, act: _Active) -> None:
        assert act.finish is not None
        result = SequenceResult(
            key=act.request.key,
            finish_reason=act.finish,
            text=act.text,
            token_ids=act.token_ids,
            logprobs=act.logprobs,
            prompt_tokens=len(act.request.prompt_ids),
            completion_tokens=act.completion_tokens,
            error=act.error,
            retryable=act.retryable,
            stopped_by_string=act.stops.stopped,
            submitted_at=act.submitted_at,
            admitted_at=act.admitted_at,
            first_token_at=act.first_token_at,
            finished_at=self.clock(),
            served_by=act.served_by,
        )
        if self.observer is not None:
            try:
                self.observer.on_finish(result)
            except Exception:
                logger.exception("engine observer failed")
        act.handle._complete(result)

    def _fail_all_active(self, error: str) -> None:
        for act in self._active.values():
            if act.finish is None:
                act.finish = FinishReason.ERROR
                act.error = error
        try:
            self._retire_marked()
        except Exception:
            logger.exception("could not remove failed sequences from the backend")
            for act in list(self._active.values()):
                del self._active[act.request.key]
                self._complete(act)

    def _shutdown(self) -> None:
        for act in (*self._active.values(), *self._waiting.values()):
            if act.finish is None:
                act.finish = FinishReason.ABORTED
                act.error = "engine stopped"
        try:
            self._retire_marked()
        except Exception:
            logger.exception("engine shutdown could not release the batch")
