# structure: one backend class: its request mapping, streaming, retries across replicas and
# the breaker share one attempt's state; the replica table and load are in versions/replicas.py.
"""An OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, Ollama's /v1, TGI's /v1,
another Sluice) as a `ModelBackend`, streaming through the `openai` SDK's async client.

Like the TGI backend, `add` starts one upstream stream per sequence on a private event loop,
`step` hands back the tokens that have arrived, `remove` cancels the stream (closing the HTTP
connection, which vLLM and the others take as an abort). The engine keeps doing what it does for
local versions: stop strings, deadlines, cancellation, guards, usage, streaming to clients.

The legacy completions endpoint carries the prompt the gateway rendered (chat template, history,
retrieved passages), so every Sluice feature that shapes a prompt works in front of any engine.
Two ways to speak to it, per version (``token_ids``):

- token ids both ways (vLLM, SGLang, Sluice): the prompt goes as ids, and the upstream's
  ``return_tokens_as_token_ids`` labels each streamed token ``token_id:<id>`` in its
  log-probabilities, so the engine gets the exact ids, log-probabilities and alternatives;
- text (llama.cpp, Ollama, OpenAI): the prompt goes as text and each chunk's text is kept as it
  came; ids are this version's tokenizer's reading of it, and usage is the upstream's own count
  (``stream_options.include_usage``) when it reports one.

Replicas: each request asks the `ReplicaPool` (inference/versions/replicas.py) for the least-loaded
healthy replica. A connection error, a timeout, a 429 or 5xx before the first token is
retried with backoff, on another replica when there is one; after the first token nothing can be
retried (the output would repeat), so a failure mid-stream fails the sequence with a clear
message. Every worker probes every replica (``GET <base>/models``) in the background.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from inference.backends.base import NO_TOKEN, Sampled
from inference.backends.remote import RemoteError, RemoteSequence, RemoteStreamsBackend, prompt_text
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams, StructuredKind, StructuredOutput

if TYPE_CHECKING:
    from inference.versions.replicas import Lease, ReplicaPool

logger = logging.getLogger(__name__)

_ID_PREFIX = "token_id:"


def base_url(url: str) -> str:
    """A server URL without a path gets ``/v1`` (what every OpenAI-compatible server serves)."""
    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


class UpstreamObserver(Protocol):
    """Where per-replica latencies go (inference/versions/replicas.py wires in the metrics)."""

    def ttft(self, url: str, seconds: float) -> None: ...

    def itl(self, url: str, seconds: float) -> None: ...

    def outcome(self, url: str, result: str) -> None: ...


class _NoObserver:
    def ttft(self, url: str, seconds: float) -> None: ...

    def itl(self, url: str, seconds: float) -> None: ...

    def outcome(self, url: str, result: str) -> None: ...


def _status(exc: BaseException) -> int:
    return int(
        getattr(exc, "status_code", 0) or getattr(getattr(exc, "response", None), "status_code", 0) or 0
    )


def _retryable(exc: BaseException) -> bool:
    # lazy: openai only in a worker that serves an openai version
    import openai

    if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError | asyncio.TimeoutError | OSError):
        return True  # APITimeoutError is an APIConnectionError: both mean the server was not reached
    status = _status(exc)
    return status >= 500 or status == 429


def _replica_fault(exc: BaseException) -> bool:
    """The replica is unwell (not the request): counts against its health."""
    return _retryable(exc) or type(exc).__name__ in {"RemoteProtocolError", "ReadError", "ReadTimeout"}


class OpenAICompatBackend(RemoteStreamsBackend):
    def __init__(
        self,
        *,
        pool: ReplicaPool,
        info: ModelInfo,
        model_id: str,
        api_key: str = "",
        token_ids: bool = True,
        max_batch_size: int = 32,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
        probe_s: float = 5.0,
        poll_s: float = 0.02,
        observer: UpstreamObserver | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, poll_s=poll_s, thread_name="openai-backend")
        self.pool = pool
        self.info = info
        self.model_id = model_id
        self._api_key = api_key
        self.token_ids = token_ids
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.probe_s = probe_s
        self.observer: UpstreamObserver = observer or _NoObserver()
        self.eos_token_ids = info.eos_token_ids
        self.context_length = info.context_length
        self.description = f"openai {', '.join(pool.urls)} ({model_id})"
        self._clients: dict[str, Any] = {}
        # Redis calls (load, health) run off the loop; the default executor has 6 threads here.
        self._loop.set_default_executor(ThreadPoolExecutor(16, thread_name_prefix="openai-upstream"))
        self._prober = asyncio.run_coroutine_threadsafe(self._probe_forever(), self._loop)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.info.decode(token_ids)

    def _refuse(self, params: SamplingParams) -> Exception | None:
        if params.prompt_logprobs is not None:
            return RemoteError(
                "prompt log-probabilities are not available from an OpenAI-compatible upstream"
            )
        return None

    def close(self) -> None:
        self._prober.cancel()
        super().close()
        self.pool.unregister()

    def _close_on_loop(self) -> None:
        async def shutdown() -> None:
            for client in self._clients.values():
                await client.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        except Exception:
            logger.debug("closing upstream clients failed", exc_info=True)

    def warmup(self) -> None:
        """Probe every replica once, so that a wrong URL shows in the log (and in the replica's
        health) at load time. Not fatal: a replica down now may be up for the next request."""
        asyncio.run_coroutine_threadsafe(self._probe_all(), self._loop).result(timeout=self.timeout_s + 5)

    # -- replicas -------------------------------------------------------------------------------

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            from openai import AsyncOpenAI, Timeout  # lazy: see _retryable

            client = AsyncOpenAI(
                base_url=base_url(url),
                api_key=self._api_key or "none",  # the SDK insists on one; servers without auth ignore it
                max_retries=0,  # retries are ours: before the first token only, on another replica
                timeout=Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
                # One connection per stream: the SDK's default pool caps at 1000, fine here.
            )
            self._clients[url] = client
        return client

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            try:
                await self._probe_all()
            except Exception:
                logger.debug("upstream probe round failed", exc_info=True)

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(url) for url in self.pool.urls))
        await asyncio.to_thread(self.pool.register)  # this worker's exact load, refreshed

    async def _probe(self, url: str) -> None:
        try:
            await self._client(url).models.list(timeout=min(5.0, self.timeout_s))
        except Exception as exc:
            if _replica_fault(exc) or _status(exc) in (401, 403, 404):
                logger.warning("upstream %s is not answering its probe: %s", url, exc)
                await asyncio.to_thread(self.pool.failed, url, f"probe: {type(exc).__name__}: {exc}")
            return
        # A good probe does not close a breaker by itself: a real request (the half-open trial) does.

    # -- the upstream stream ----------------------------------------------------------------------

    def _prompt(self, ids: list[int]) -> list[int] | str:
        return ids if self.token_ids else prompt_text(self.info, ids)

    def _request(self, ids: list[int], params: SamplingParams) -> dict[str, Any]:
        room = max(1, self.context_length - len(ids))
        body: dict[str, Any] = {
            "model": self.model_id,
            "prompt": self._prompt(ids),
            "max_tokens": min(params.max_new_tokens, room),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0 if params.greedy else params.temperature,
        }
        extra: dict[str, Any] = {}
        if not params.greedy and params.top_p < 1.0:
            body["top_p"] = params.top_p
        if not params.greedy and params.top_k > 0:
            extra["top_k"] = params.top_k  # not in OpenAI's schema; vLLM, SGLang, llama.cpp take it
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop and not params.include_stop:
            # The upstream stops there too; the engine still matches (a TGI client's
            # include-stop request keeps the string, which OpenAI upstreams drop, so it is not sent).
            body["stop"] = list(params.stop)[:4]
        if params.ignore_eos:
            extra["ignore_eos"] = True
        # OpenAI's own fields, for every upstream.
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if self.token_ids:
            # vLLM's extensions (SGLang and Sluice take them too); token ids are the upstream's
            # own here, so biases and id lists mean the same there.
            if params.logit_bias:
                body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
            for name, value, unset in (
                ("repetition_penalty", params.repetition_penalty, 1.0),
                ("min_tokens", params.min_tokens, 0),
                ("min_p", params.min_p, 0.0),
                ("stop_token_ids", list(params.stop_token_ids), []),
                ("allowed_token_ids", list(params.allowed_token_ids), []),
            ):
                if value != unset:
                    extra[name] = value
            if params.structured is not None:
                extra["structured_outputs"] = structured_outputs(params.structured)
        if self.token_ids:
            body["logprobs"] = params.top_logprobs
            extra["return_tokens_as_token_ids"] = True
        elif params.top_logprobs:
            body["logprobs"] = params.top_logprobs
        if extra:
            body["extra_body"] = extra
        return body

    def _parse_id(self, token: str) -> int | None:
        if token.startswith(_ID_PREFIX):
            try:
                return int(token[len(_ID_PREFIX) :])
            except ValueError:
                return None
        return self.info.tokenizer.token_to_id(token) if not self.token_ids else None

    def _tokens(self, choice: Any) -> list[Sampled]:
        """One Sampled per token of a chunk's choice."""
        text = choice.text or ""
        logprobs = getattr(choice, "logprobs", None)
        if self.token_ids:
            if logprobs is None or not logprobs.tokens:
                if text:
                    raise RemoteError(
                        "the upstream sent text without token ids: turn off 'token ids' on this version "
                        "(the upstream does not support return_tokens_as_token_ids)"
                    )
                return []
            out = []
            values = logprobs.token_logprobs or []
            tops = logprobs.top_logprobs or []
            for i, token in enumerate(logprobs.tokens):
                token_id = self._parse_id(token)
                if token_id is None:
                    raise RemoteError(f"the upstream sent a token without its id: {token!r}")
                alternatives: list[tuple[int, float]] = []
                for alt, value in (tops[i] or {}).items() if i < len(tops) else ():
                    alt_id = self._parse_id(alt)
                    if alt_id is not None:
                        alternatives.append((alt_id, float(value)))
                alternatives.sort(key=lambda item: -item[1])
                logprob = values[i] if i < len(values) and values[i] is not None else 0.0
                out.append(Sampled(token_id=token_id, logprob=float(logprob), top=tuple(alternatives)))
            return out
        if not text:
            return []
        ids = self.info.tokenizer.encode(text, add_special_tokens=False).ids or [0]
        return [
            Sampled(token_id=int(token_id), logprob=0.0, text=text if i == 0 else "")
            for i, token_id in enumerate(ids)
        ]

    async def _stream(self, sequence: RemoteSequence, ids: list[int], params: SamplingParams) -> None:
        held: list[Lease] = []
        try:
            await self._attempts(sequence, ids, params, held)
        finally:
            # Whatever ended the stream, its reservations go back (release is idempotent).
            for lease in held:
                if not lease.released:
                    await _surely(self.pool.release, lease)

    async def _attempts(
        self, sequence: RemoteSequence, ids: list[int], params: SamplingParams, held: list[Lease]
    ) -> None:
        body = self._request(ids, params)
        delay = self.backoff_s
        tried: list[str] = []
        last_error = ""
        for attempt in range(1, self.retries + 1):
            try:
                lease = await self._acquire(len(ids), body["max_tokens"], tried)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NoReplica: every replica is out of rotation
                last_error = str(exc)
                if attempt < self.retries:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                break
            held.append(lease)
            sequence.url, sequence.received = lease.url, 0
            tried.append(lease.url)
            try:
                await self._run(sequence, lease, body)
            except asyncio.CancelledError:
                # Sluice closed the stream (the sequence finished, was cancelled or expired):
                # tokens received mean the replica served well.
                result = "closed" if sequence.received else "cancelled"
                await _surely(self._end, lease, result, None)
                raise
            except _AttemptFailed as failed:
                cause, received = failed.cause, failed.received
                fault = f"{type(cause).__name__}: {_short(cause)}" if _replica_fault(cause) else None
                await _surely(self._end, lease, "error", fault)
                last_error = f"{lease.url}: {type(cause).__name__}: {_short(cause)}"
                if received == 0 and attempt < self.retries and _retryable(cause):
                    # Another replica not tried yet: go there at once; else back off first.
                    wait = 0.0 if len(set(tried)) < len(self.pool.urls) else delay
                    logger.warning(
                        "upstream %s: attempt %d/%d failed (%s); retrying in %.1fs",
                        lease.url, attempt, self.retries, type(cause).__name__, wait,
                    )  # fmt: skip
                    if wait:
                        await asyncio.sleep(wait)
                        delay *= 2
                    continue
                self._fail(
                    sequence,
                    f"upstream {lease.url}",
                    f"{type(cause).__name__}: {_short(cause)}",
                    received=received,
                    attempts=attempt,
                    retryable=_retryable(cause),
                )
                return
            await _surely(self._end, lease, "ok", None)
            return
        self._deliver(
            sequence,
            RemoteError(f"upstream failed after {self.retries} attempt(s): {last_error}", retryable=True),
        )

    async def _acquire(self, prompt_tokens: int, max_tokens: int, tried: list[str]) -> Lease:
        """A replica for one attempt. Cancelled meanwhile, the reservation the thread still
        makes is given back (else the replica would look busy for as long as this worker lives)."""
        acquiring = asyncio.ensure_future(
            asyncio.to_thread(
                self.pool.acquire, prompt_tokens=prompt_tokens, max_tokens=max_tokens, exclude=tried
            )
        )
        try:
            return await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            try:
                lease = await acquiring
            except Exception:
                raise asyncio.CancelledError from None
            await _surely(self.pool.release, lease)
            raise

    def _end(self, lease: Lease, result: str, fault: str | None) -> None:
        self.pool.release(lease)
        if result in ("ok", "closed"):
            self.pool.succeeded(lease.url)
        elif fault is not None:
            self.pool.failed(lease.url, fault)
        self.observer.outcome(lease.url, result)

    async def _run(self, sequence: RemoteSequence, lease: Lease, body: dict[str, Any]) -> None:
        """Stream one attempt into ``out``; a failure is raised as `_AttemptFailed` with the
        count of tokens already handed on (none: the attempt may be retried)."""
        received = 0
        started = last = time.monotonic()
        finish: str | None = None
        usage: int | None = None
        try:
            stream = await self._client(lease.url).completions.create(**body)
            async with stream:
                async for chunk in stream:
                    if getattr(chunk, "usage", None) is not None:
                        usage = int(chunk.usage.completion_tokens)
                    for choice in chunk.choices or ():
                        for sampled in self._tokens(choice):
                            self._deliver(sequence, sampled)
                            now = time.monotonic()
                            if received == 0:
                                self.observer.ttft(lease.url, now - started)
                                await _surely(self.pool.prefilled, lease)
                            else:
                                self.observer.itl(lease.url, now - last)
                            last = now
                            received += 1
                            sequence.received = received
                        if choice.finish_reason:
                            finish = str(choice.finish_reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _AttemptFailed(exc, received) from exc
        if finish is None:
            raise _AttemptFailed(
                RemoteError("the upstream ended the stream before the sequence finished"), received
            )
        # The end rides on a marker after the last token: the usage chunk comes after it.
        self._deliver(
            sequence,
            Sampled(
                token_id=NO_TOKEN,
                logprob=0.0,
                final="length" if finish == "length" else "stop",
                # The upstream's own count wins where it gave one (the engine keeps the larger of
                # it and the ids received): a token whose chunk carried no id still counts.
                completion_tokens=usage,
            ),
        )


def structured_outputs(structured: StructuredOutput) -> dict[str, Any]:
    """A constraint in vLLM's ``structured_outputs`` form (what vLLM >= 0.10.2, SGLang and
    Sluice take on /v1/completions)."""
    kind = structured.kind
    spec: dict[str, Any]
    if kind is StructuredKind.JSON_SCHEMA:
        spec = {"json": json.loads(structured.value)}
    elif kind is StructuredKind.JSON_OBJECT:
        spec = {"json_object": True}
    elif kind is StructuredKind.CHOICE:
        spec = {"choice": json.loads(structured.value)}
    else:
        spec = {"regex" if kind is StructuredKind.REGEX else "grammar": structured.value}
    # Sluice allows no free JSON whitespace unless asked; say so to an upstream that does.
    spec["disable_any_whitespace"] = not structured.whitespace
    return spec


class _AttemptFailed(Exception):
    def __init__(self, cause: BaseException, received: int) -> None:
        super().__init__(str(cause))
        self.cause, self.received = cause, received


async def _surely(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn`` in a thread even if this task is cancelled meanwhile. A plain
    ``await asyncio.to_thread(...)`` that is cancelled before the thread picks the call up
    drops it (the executor cancels a pending work item): a reservation would never be given
    back, an outcome never counted."""
    await asyncio.shield(asyncio.to_thread(fn, *args))


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "…"
