"""Closed-loop load over the full HTTP path: ``concurrency`` clients, each sending streaming
chat completions back to back, timing every SSE chunk as the client receives it."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from inference.prompts import ModelInfo


@dataclass
class Workload:
    name: str
    prompt_tokens: int
    output_tokens: list[int]  # one per request, cycled

    @classmethod
    def fixed(cls, prompt: int = 64, output: int = 64) -> Workload:
        return cls(f"fixed-{prompt}in-{output}out", prompt, [output])

    @classmethod
    def exponential(
        cls, prompt: int = 64, mean: int = 64, cap: int = 256, seed: int = 1234, n: int = 4096
    ) -> Workload:
        rng = random.Random(seed)
        lengths = [max(1, min(cap, math.ceil(rng.expovariate(1 / mean)))) for _ in range(n)]
        return cls(f"exponential-{prompt}in-mean{mean}-cap{cap}", prompt, lengths)


@dataclass
class RequestResult:
    ttft: float
    itl: list[float]
    e2e: float
    output_tokens: int
    prompt_tokens: int


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    seconds: float
    results: list[RequestResult] = field(default_factory=list)
    errors: int = 0
    error_messages: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ttft = [r.ttft for r in self.results]
        itl = [x for r in self.results for x in r.itl]
        e2e = [r.e2e for r in self.results]
        tokens = sum(r.output_tokens for r in self.results)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.results),
            "errors": self.errors,
            "error_messages": self.error_messages,
            "output_tokens": tokens,
            "mean_prompt_tokens": round(statistics.mean(r.prompt_tokens for r in self.results), 1)
            if self.results
            else 0,
            "output_tokens_per_s": round(tokens / self.seconds, 1),
            "requests_per_s": round(len(self.results) / self.seconds, 2),
            "ttft_p50_ms": _ms(ttft, 0.50),
            "ttft_p99_ms": _ms(ttft, 0.99),
            "itl_p50_ms": _ms(itl, 0.50),
            "itl_p99_ms": _ms(itl, 0.99),
            "e2e_p50_ms": _ms(e2e, 0.50),
            "e2e_p99_ms": _ms(e2e, 0.99),
        }


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def build_prompt(info: ModelInfo, target: int, salt: int) -> str:
    """A user message whose chat prompt is ``target`` tokens long (as close as words allow)."""
    words = ["river", "water", "stone", "bridge", "valley", "rain", "cloud", "mill"]
    text = f"Note {salt}:"
    while len(info.chat_prompt_ids([{"role": "user", "content": text}])) < target:
        text += " " + words[len(text) % len(words)]
    return text


async def _one(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    model: str,
    prompt: str,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        **(extra or {}),
    }
    started = time.perf_counter()
    chunks: list[float] = []
    usage: dict[str, int] = {}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            payload = json.loads(data)
            if "error" in payload:
                raise RuntimeError(payload["error"]["message"])
            if payload.get("usage"):
                usage = payload["usage"]
            choices = payload.get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                chunks.append(time.perf_counter())
            elif choices and choices[0].get("finish_reason") and not chunks:
                # Only tokens without text (an end-of-sequence token under ignore_eos): the
                # finish chunk is the first thing the client sees.
                chunks.append(time.perf_counter())
    ended = time.perf_counter()
    if not chunks:
        raise RuntimeError("no tokens streamed")
    return RequestResult(
        ttft=chunks[0] - started,
        itl=[b - a for a, b in itertools.pairwise(chunks)],
        e2e=ended - started,
        output_tokens=int(usage.get("completion_tokens", len(chunks))),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
    )


async def run_level(
    base_url: str,
    key: str,
    model: str,
    info: ModelInfo,
    workload: Workload,
    concurrency: int,
    requests: int,
    extra: dict[str, Any] | None = None,
    salt: int = 0,
) -> LevelResult:
    """``extra``: more fields of every request's body (a response_format, say); ``salt``: another
    set of prompts (two systems compared on one stack must not share the prefix cache)."""
    url = f"{base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    prompts = [build_prompt(info, workload.prompt_tokens, salt + i) for i in range(min(requests, 64))]
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), limits=limits) as client:
        # Warm-up: connections, the worker's first batch.
        await asyncio.gather(
            *[_one(client, url, headers, model, prompts[0], 4, extra) for _ in range(min(concurrency, 4))]
        )
        next_index = 0
        level = LevelResult(concurrency=concurrency, requests=requests, seconds=0.0)

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                index = next_index
                next_index += 1
                output = workload.output_tokens[index % len(workload.output_tokens)]
                try:
                    level.results.append(
                        await _one(client, url, headers, model, prompts[index % len(prompts)], output, extra)
                    )
                except Exception as exc:
                    level.errors += 1
                    message = f"{type(exc).__name__}: {exc}"[:200]
                    level.error_messages[message] = level.error_messages.get(message, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        level.seconds = time.perf_counter() - started
    return level
