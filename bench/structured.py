"""Structured outputs: what a JSON-schema constraint costs, on the ~110M Llama (vocab 32000).

- step: the backend driven directly (no HTTP): a decode step of B sequences all constrained by
  one JSON schema against the same B unconstrained, greedy, same prompts, at B = 1 and 16
  (median over ``steps`` steps, best of ``runs``). The target: constrained / unconstrained
  <= 1.15 at B = 16. And the grammar's own work in a step (masks filled and applied, tokens
  consumed), timed alone: the part of the ratio the host's noise does not blur.
- compile: llguidance's view of the vocabulary, built once when the version loads; the schema
  compiled once per version: the first sequence's compile time, then 16 more sequences with it
  (cache hits, no compile), and the compile count.
- served: the full HTTP path (streaming chat completions) at concurrency 1 and 16, with and
  without ``response_format`` (json_schema), in the same run: output tokens/s and ITL p50.

The schema keeps every sequence inside it for the whole measurement (an array of at least 200
short strings), so no sequence ends early and both sides decode the same number of tokens.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import torch

from bench.load import Workload, run_level
from bench.models import BenchModel
from bench.stack import Stack
from inference.backends.grammar import GrammarBatch, GrammarCache
from inference.backends.torch_local import TorchCausalLMBackend
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams, StructuredOutput

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 200},
    },
    "required": ["items"],
    "additionalProperties": False,
}


def _prompt(seed: int, vocab: int, n: int = 64) -> list[int]:
    return [(seed * 7919 + i * 104729) % (vocab - 10) + 10 for i in range(n)]


def _step_ms(backend: TorchCausalLMBackend, batch: int, params: SamplingParams, steps: int) -> float:
    keys = [f"s{i}" for i in range(batch)]
    backend.enqueue(keys, [_prompt(i, backend.vocab_size) for i in range(batch)], [params] * batch)
    first: set[str] = set()
    while len(first) < batch:  # prefill (chunked by the step budget) until every first token
        first |= set(backend.step())
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        results = backend.step()
        times.append(time.perf_counter() - started)
        assert not any(isinstance(r, Exception) for r in results.values()), results
    backend.remove(keys)
    return statistics.median(times) * 1000


def step(model: BenchModel, *, threads: int, steps: int = 48, runs: int = 3) -> dict[str, Any]:
    info = ModelInfo(model.name, model.path)
    backend = TorchCausalLMBackend(
        model.path,
        dtype=model.dtype,
        threads=threads,
        max_batch_size=16,
        eos_token_ids=[],
        vocab_decode=info.decode,
    )
    backend.warmup()
    structured = StructuredOutput.json_schema(SCHEMA)
    constrained = SamplingParams(max_tokens=4096, temperature=0.0, structured=structured)
    plain = SamplingParams(max_tokens=4096, temperature=0.0)

    started = time.perf_counter()
    GrammarCache(
        model.path / "tokenizer.json",
        vocab_size=backend.vocab_size,
        eos_token_ids=sorted(backend.eos_token_ids),
    )
    vocabulary_ms = (time.perf_counter() - started) * 1000  # what the version's load pays once
    started = time.perf_counter()
    backend.prepare(constrained)  # the version's first sequence with this schema: compiled
    compile_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for _ in range(16):
        backend.prepare(constrained)  # the same schema again: from the cache
    cached_ms = (time.perf_counter() - started) * 1000 / 16
    grammars = backend.grammars()

    rows = []
    for batch in (1, 16):
        best = {"unconstrained": float("inf"), "json_schema": float("inf")}
        for _ in range(runs):  # interleaved: the host's drift hits both alike
            best["unconstrained"] = min(best["unconstrained"], _step_ms(backend, batch, plain, steps))
            best["json_schema"] = min(best["json_schema"], _step_ms(backend, batch, constrained, steps))
        rows.append(
            {
                "batch": batch,
                "unconstrained_step_ms": round(best["unconstrained"], 2),
                "json_schema_step_ms": round(best["json_schema"], 2),
                "constrained_over_unconstrained": round(best["json_schema"] / best["unconstrained"], 3),
            }
        )
    # The grammar's own work in a step, timed alone (the step times above carry the host's
    # noise): masks filled and applied for the batch, then the chosen tokens consumed.
    work = []
    for batch in (1, 16):
        matchers = [grammars.matcher(structured) for _ in range(batch)]
        logits = torch.randn(batch, backend.vocab_size)
        masks = GrammarBatch(grammars)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            masks.apply(logits, list(range(batch)), matchers)
            chosen = logits.max(dim=-1).indices.tolist()
            GrammarBatch.advance(grammars, matchers, chosen)
            times.append(time.perf_counter() - started)
        work.append({"batch": batch, "grammar_ms_per_step": round(statistics.median(times) * 1000, 3)})
    for row, timed in zip(rows, work, strict=True):
        row["grammar_ms_per_step"] = timed["grammar_ms_per_step"]
        row["grammar_share_of_step"] = round(timed["grammar_ms_per_step"] / row["unconstrained_step_ms"], 4)
    backend.close()
    return {
        "step": rows,
        "compile": {
            "vocabulary_build_ms_at_load": round(vocabulary_ms, 1),
            "first_compile_ms": round(compile_ms, 2),
            "cached_lookup_ms": round(cached_ms, 3),
            "compiles": grammars.compiles,
            "cache_hits": grammars.hits,
        },
        "target_batch16_ratio": 1.15,
        "met": rows[-1]["constrained_over_unconstrained"] <= 1.15,
    }


def served(model: BenchModel, stack: Stack, *, levels: tuple[int, ...] = (1, 16)) -> list[dict[str, Any]]:
    info = ModelInfo(model.name, model.path)
    base_url = stack.start(model, max_batch_size=max(levels), label="structured")
    schema_format = {"type": "json_schema", "json_schema": {"name": "items", "schema": SCHEMA}}
    rows = []
    systems: list[tuple[str, dict[str, Any] | None]] = [
        ("unconstrained", None),
        ("json_schema", {"response_format": schema_format}),
    ]
    for concurrency in levels:
        # Alternate which goes first (a level's first run absorbs the stack's warming up).
        order = systems if concurrency == levels[0] else systems[::-1]
        for number, (name, extra) in enumerate(order):
            level = asyncio.run(
                run_level(
                    base_url,
                    stack.key,
                    model.name,
                    info,
                    Workload.fixed(64, 64),
                    concurrency,
                    max(12, 2 * concurrency),
                    extra=extra,
                    salt=1000 * (2 * concurrency + number),  # prompts of their own: no prefix-cache hits
                )
            )
            summary = level.summary()
            rows.append(
                {
                    "system": name,
                    **{
                        key: summary[key]
                        for key in (
                            "concurrency",
                            "requests",
                            "errors",
                            "output_tokens_per_s",
                            "ttft_p50_ms",
                            "ttft_p99_ms",
                            "itl_p50_ms",
                            "itl_p99_ms",
                            "e2e_p99_ms",
                        )
                    },
                }
            )
    stack.stop()
    return rows
