"""What every remote backend (a TGI server, an OpenAI-compatible engine) shares: one upstream
stream per sequence on a private event loop, and the engine-facing side of it.

The engine drives a remote backend like a local model: `add` starts one stream per sequence,
`step` hands back the tokens that have arrived (a sequence without a new token is simply
absent), `remove` cancels the streams of finished, cancelled or expired sequences (closing the
HTTP connection, which the server takes as an abort). So cancellation, deadlines, stop strings,
usage and streaming to clients work exactly as for local versions.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from inference.backends.base import ModelBackend, Sampled
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class RemoteError(RuntimeError):
    """The remote server failed this sequence. ``retryable``: it failed before sending any
    token (unreachable, 5xx, timeouts), so the job may be tried again later."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class RemoteSequence:
    """One sequence's upstream stream: its task, the tokens it delivered, where it runs."""

    key: str
    future: Future[None] = field(default_factory=Future)
    tokens: queue.SimpleQueue[Sampled | Exception] = field(default_factory=queue.SimpleQueue)
    url: str = ""
    received: int = 0  # tokens of the current attempt


class RemoteStreamsBackend(ModelBackend):
    def __init__(self, *, max_batch_size: int, poll_s: float, thread_name: str) -> None:
        self.max_batch_size = max_batch_size
        self.poll_s = poll_s
        self._sequences: dict[str, RemoteSequence] = {}
        self._ready: queue.SimpleQueue[str] = queue.SimpleQueue()  # keys with new tokens
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name, daemon=True)
        self._thread.start()

    # -- for subclasses ---------------------------------------------------------------------

    @abstractmethod
    async def _stream(self, sequence: RemoteSequence, ids: list[int], params: SamplingParams) -> None:
        """Stream one sequence, handing each token (or the error that ends it) to `_deliver`."""

    def _refuse(self, params: SamplingParams) -> Exception | None:
        """A request this upstream cannot serve (answered at once, no stream started)."""
        return None

    def _deliver(self, sequence: RemoteSequence, item: Sampled | Exception) -> None:
        sequence.tokens.put(item)
        self._ready.put(sequence.key)

    def _fail(
        self,
        sequence: RemoteSequence,
        server: str,
        error: str,
        *,
        received: int,
        attempts: int,
        retryable: bool,
    ) -> None:
        """End a sequence on an upstream failure. Only one that sent no token may be retried
        (the output would repeat); the message says which it was."""
        where = "mid-stream" if received else f"after {attempts} attempt(s)"
        self._deliver(
            sequence, RemoteError(f"{server} failed {where}: {error}", retryable=received == 0 and retryable)
        )

    # -- ModelBackend ----------------------------------------------------------------------

    @property
    def batch_keys(self) -> list[str]:
        return list(self._sequences)

    def served_by(self, key: str) -> str:
        sequence = self._sequences.get(key)
        return sequence.url if sequence is not None else ""

    def add(
        self, keys: Sequence[str], token_ids: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> dict[str, Sampled | Exception]:
        if len(self._sequences) + len(keys) > self.max_batch_size:
            raise RuntimeError("batch is full")
        refused: dict[str, Sampled | Exception] = {}
        for key, ids, param in zip(keys, token_ids, params, strict=True):
            error = self._refuse(param)
            if error is not None:
                refused[key] = error
                continue
            sequence = RemoteSequence(key=key)
            sequence.future = asyncio.run_coroutine_threadsafe(
                self._stream(sequence, list(ids), param), self._loop
            )
            self._sequences[key] = sequence
        # First tokens arrive later, through step(): the engine waits for them like any other.
        return refused

    def step(self) -> dict[str, Sampled | Exception]:
        """The next token of every sequence that has one (waiting briefly if none has)."""
        out: dict[str, Sampled | Exception] = {}
        try:
            self._ready.get(timeout=self.poll_s)
        except queue.Empty:
            return out
        while True:  # drain the wake-ups; each sequence gives at most one token per step
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        for key, sequence in self._sequences.items():
            try:
                out[key] = sequence.tokens.get_nowait()
            except queue.Empty:
                continue
        if any(not s.tokens.empty() for s in self._sequences.values()):
            self._ready.put("")  # more queued: the next step returns at once
        return out

    def wake(self) -> None:
        self._ready.put("")

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            sequence = self._sequences.pop(key, None)
            if sequence is not None:
                sequence.future.cancel()  # closes the HTTP stream: the server stops generating

    def close(self) -> None:
        self.remove(list(self._sequences))
        self._close_on_loop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _close_on_loop(self) -> None:
        """Release what lives on the loop (clients), before it stops."""


def prompt_text(info: ModelInfo, ids: list[int]) -> str:
    """A prompt's ids as the text a server re-tokenizes, without the BOS it adds itself."""
    bos = info.tokenizer.token_to_id(info.bos_token) if info.bos_token else None
    if ids and bos is not None and ids[0] == bos:
        ids = ids[1:]
    return str(info.tokenizer.decode(ids, skip_special_tokens=False))
