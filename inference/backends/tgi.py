"""A remote text-generation-inference server as a `ModelBackend`, through
`huggingface_hub.AsyncInferenceClient` (streaming).

The engine drives it like a local model: `add` starts one remote stream per sequence, `step`
hands back the tokens that have arrived (a sequence without a new token is simply absent),
`remove` closes the streams of finished, cancelled or expired sequences (the server sees the
disconnect). So cancellation, deadlines, stop strings, usage and streaming to clients work
exactly as for local versions.

Failures: a connection error, a timeout or a 5xx before the first token is retried with
exponential backoff (`retries` attempts); after the first token nothing can be retried (the
output would repeat), so an error mid-stream fails the sequence with a clear message. A server
that stops sending is caught by the read timeout. The URL comes from the admin-configured
model version only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from inference.backends.base import ModelBackend, Sampled
from inference.batching import SamplingParams
from inference.prompts import ModelInfo

logger = logging.getLogger(__name__)


class RemoteError(RuntimeError):
    """The remote server failed this sequence. ``retryable``: it failed before sending any
    token (unreachable, 5xx, timeouts), so the job may be tried again later."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class _Remote:
    future: Future[None]
    tokens: queue.SimpleQueue[Sampled | Exception] = field(default_factory=queue.SimpleQueue)


def _retryable(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

    if isinstance(exc, InferenceTimeoutError | asyncio.TimeoutError | OSError):
        return True
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
        return status >= 500 or status == 429
    # httpx(2) transport errors (connection refused, reset, DNS) without importing httpx here.
    return type(exc).__name__ in {
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "PoolTimeout",
        "RemoteProtocolError",
    }


class TgiBackend(ModelBackend):
    def __init__(
        self,
        *,
        url: str,
        info: ModelInfo,
        api_key: str = "",
        max_batch_size: int = 32,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
        poll_s: float = 0.02,
    ) -> None:
        self.url = url.rstrip("/")
        self.info = info
        self.api_key = api_key
        self.max_batch_size = max_batch_size
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.eos_token_ids = info.eos_token_ids
        self.context_length = info.context_length
        self.description = f"tgi {self.url}"
        self._sequences: dict[str, _Remote] = {}
        self._ready: queue.SimpleQueue[str] = queue.SimpleQueue()  # keys with new tokens
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tgi-backend", daemon=True)
        self._thread.start()

    # -- ModelBackend ------------------------------------------------------------------------

    @property
    def batch_keys(self) -> list[str]:
        return list(self._sequences)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.info.decode(token_ids)

    def add(
        self, keys: Sequence[str], token_ids: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> dict[str, Sampled | Exception]:
        if len(self._sequences) + len(keys) > self.max_batch_size:
            raise RuntimeError("batch is full")
        for key, ids, param in zip(keys, token_ids, params, strict=True):
            remote_tokens: queue.SimpleQueue[Sampled | Exception] = queue.SimpleQueue()
            future = asyncio.run_coroutine_threadsafe(
                self._stream(key, list(ids), param, remote_tokens), self._loop
            )
            self._sequences[key] = _Remote(future=future, tokens=remote_tokens)
        # First tokens arrive later, through step(): the engine waits for them like any other.
        return {}

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
        for key, remote in self._sequences.items():
            try:
                out[key] = remote.tokens.get_nowait()
            except queue.Empty:
                continue
        if any(not r.tokens.empty() for r in self._sequences.values()):
            self._ready.put("")  # more queued: the next step returns at once
        return out

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            remote = self._sequences.pop(key, None)
            if remote is not None:
                remote.future.cancel()  # closes the HTTP stream: the server stops generating

    def close(self) -> None:
        self.remove(list(self._sequences))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def warmup(self) -> None:
        """Ask the server for its /info, so that a wrong URL shows in the log at load time. Not
        fatal: a server that is down now may be up for the next request (each one retries)."""
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = httpx.get(f"{self.url}/info", headers=headers, timeout=min(5.0, self.timeout_s))
            response.raise_for_status()
        except httpx.HTTPError as exc:
            logger.warning("tgi %s is not answering yet: %s", self.url, exc)

    # -- the remote stream ----------------------------------------------------------------------

    def _prompt_text(self, ids: list[int]) -> str:
        bos = self.info.tokenizer.token_to_id(self.info.bos_token) if self.info.bos_token else None
        if ids and bos is not None and ids[0] == bos:
            ids = ids[1:]  # the server adds its own
        return str(self.info.tokenizer.decode(ids, skip_special_tokens=False))

    async def _stream(
        self, key: str, ids: list[int], params: SamplingParams, out: queue.SimpleQueue[Sampled | Exception]
    ) -> None:
        from huggingface_hub import AsyncInferenceClient

        sampling: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "details": True,
            "stream": True,
            "stop": list(params.stop) or None,
            "seed": params.seed,
        }
        if params.greedy:
            sampling["do_sample"] = False
        else:
            sampling.update(do_sample=True, temperature=params.temperature)
            if params.top_p < 1.0:
                sampling["top_p"] = params.top_p
            if params.top_k > 0:
                sampling["top_k"] = params.top_k
        prompt = self._prompt_text(ids)
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            received = 0
            try:
                async with AsyncInferenceClient(
                    base_url=self.url, api_key=self.api_key or None, timeout=self.timeout_s
                ) as client:
                    stream = await client.text_generation(prompt, **sampling)
                    async for event in stream:
                        token = event.token
                        out.put(Sampled(token_id=int(token.id), logprob=float(token.logprob or 0.0)))
                        received += 1
                        self._ready.put(key)
                out.put(RemoteError("the remote server ended the stream before the sequence finished"))
                self._ready.put(key)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if received == 0 and attempt < self.retries and _retryable(exc):
                    logger.warning(
                        "tgi %s: attempt %d/%d failed (%s); retrying in %.1fs",
                        self.url,
                        attempt,
                        self.retries,
                        type(exc).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                where = "mid-stream" if received else f"after {attempt} attempt(s)"
                out.put(
                    RemoteError(
                        f"remote server {self.url} failed {where}: {type(exc).__name__}: {exc}",
                        retryable=received == 0 and _retryable(exc),
                    )
                )
                self._ready.put(key)
                return
