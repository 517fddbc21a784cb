"""A remote text-generation-inference server as a `ModelBackend`, through
`huggingface_hub.AsyncInferenceClient` (streaming).

The engine drives it like a local model (inference/backends/remote.py): one remote stream per
sequence, closed when the sequence finishes, is cancelled or expires (the server sees the
disconnect).

Failures: a connection error, a timeout or a 5xx before the first token is retried with
exponential backoff (`retries` attempts); after the first token nothing can be retried (the
output would repeat), so an error mid-stream fails the sequence with a clear message. A server
that stops sending is caught by the read timeout. The URL comes from the admin-configured
model version only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from inference.backends.base import Sampled
from inference.backends.remote import RemoteError, RemoteSequence, RemoteStreamsBackend, prompt_text
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams, StructuredKind, StructuredOutput

logger = logging.getLogger(__name__)

__all__ = ["RemoteError", "TgiBackend"]


def _retryable(exc: BaseException) -> bool:
    # lazy: huggingface_hub only in a worker that serves a TGI version
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


def tgi_grammar(structured: StructuredOutput) -> dict[str, Any]:
    """A constraint as TGI's ``grammar`` parameter (a JSON schema or a regex: what TGI takes;
    the gateway refuses the other kinds for TGI versions)."""
    if structured.kind is StructuredKind.REGEX:
        return {"type": "regex", "value": structured.value}
    schema = (
        json.loads(structured.value) if structured.kind is StructuredKind.JSON_SCHEMA else {"type": "object"}
    )
    return {"type": "json", "value": schema}


class TgiBackend(RemoteStreamsBackend):
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
        super().__init__(max_batch_size=max_batch_size, poll_s=poll_s, thread_name="tgi-backend")
        self.url = url.rstrip("/")
        self.info = info
        self.api_key = api_key
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.eos_token_ids = info.eos_token_ids
        self.context_length = info.context_length
        self.description = f"tgi {self.url}"

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.info.decode(token_ids)

    def warmup(self) -> None:
        """Ask the server for its /info, so that a wrong URL shows in the log at load time. Not
        fatal: a server that is down now may be up for the next request (each one retries)."""
        import httpx  # lazy: only a worker that serves a TGI version needs it

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = httpx.get(f"{self.url}/info", headers=headers, timeout=min(5.0, self.timeout_s))
            response.raise_for_status()
        except httpx.HTTPError as exc:
            logger.warning("tgi %s is not answering yet: %s", self.url, exc)

    # -- the remote stream ----------------------------------------------------------------------

    async def _stream(self, sequence: RemoteSequence, ids: list[int], params: SamplingParams) -> None:
        from huggingface_hub import AsyncInferenceClient  # lazy: see _retryable

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
            if params.typical_p < 1.0:
                sampling["typical_p"] = params.typical_p
        if params.repetition_penalty != 1.0:
            sampling["repetition_penalty"] = params.repetition_penalty
        if params.frequency_penalty:
            sampling["frequency_penalty"] = params.frequency_penalty
        if params.top_logprobs:
            sampling["top_n_tokens"] = params.top_logprobs
        if params.structured is not None:
            sampling["grammar"] = tgi_grammar(params.structured)
        prompt = prompt_text(self.info, ids)
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
                        top = tuple(
                            (int(alt.id), float(alt.logprob or 0.0)) for alt in (event.top_tokens or [])
                        )[: params.top_logprobs]
                        # TGI's last event carries its details: the server ended the sequence
                        # there (its end of sequence, a stop, a complete grammar, its limit).
                        details = getattr(event, "details", None)
                        reason = str(getattr(details, "finish_reason", "") or "") if details else ""
                        final = ("length" if reason == "length" else "stop") if details else None
                        self._deliver(
                            sequence,
                            Sampled(
                                token_id=int(token.id),
                                logprob=float(token.logprob or 0.0),
                                top=top,
                                final=final,
                            ),
                        )
                        received += 1
                        if final is not None:
                            return
                self._deliver(
                    sequence, RemoteError("the remote server ended the stream before the sequence finished")
                )
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
                self._fail(
                    sequence,
                    f"remote server {self.url}",
                    f"{type(exc).__name__}: {exc}",
                    received=received,
                    attempts=attempt,
                    retryable=_retryable(exc),
                )
                return
