"""The engine's own mechanics on the ~110M Llama, driven directly (no HTTP): what the prefix
cache saves on a session's turns, and what fused prefill costs the sequences already decoding.

- session: three turns of one conversation: a 1800-token first prompt (a document, RAG
  passages), then each turn the whole history plus a 48-token message (turn 3 is ~2k
  tokens), 32 new tokens per turn; time to first token of each turn with the prefix cache
  and without it (a fresh backend each way, same prompts).
- fused: 16 sequences decoding while a wave of 16 new 64-token prompts arrives; the longest
  gap between two tokens of a running sequence (ITL p99 / max) against the decode-only step,
  at step budgets (SLUICE_STEP_TOKENS) of 256 (the default) and 512.
- parallel: n = 4 samples of one 1024-token prompt (prefilled once, forked) against 4
  different prompts of that length: prompt tokens computed, time to every first token.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.models import BenchModel
from inference.backends.torch_local import TorchCausalLMBackend
from inference.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=4096, temperature=0.0, ignore_eos=True)


def _warm_backend(model: BenchModel, threads: int, **options: Any) -> TorchCausalLMBackend:
    """The model's backend as a worker runs it (no end-of-sequence: exact lengths), warmed up."""
    backend = TorchCausalLMBackend(
        model.path, dtype=model.dtype, threads=threads, eos_token_ids=[], **options
    )
    backend.warmup()
    return backend


def _tokens(seed: int, n: int, vocab: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % (vocab - 10) + 10 for i in range(n)]


def _first_token_s(backend: TorchCausalLMBackend, key: str, ids: list[int]) -> float:
    started = time.perf_counter()
    backend.enqueue([key], [ids], [GREEDY])
    while key not in backend.step():
        pass
    return time.perf_counter() - started


def session(model: BenchModel, *, threads: int, cache_mb: int = 256) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for cached in (True, False):
        backend = _warm_backend(
            model, threads, max_batch_size=4, prefix_cache_bytes=(cache_mb if cached else 0) * 1024 * 1024
        )
        history: list[int] = []
        for turn in range(1, 4):
            prompt = [*history, *_tokens(turn, 1800 if turn == 1 else 48, backend.vocab_size)]
            key = f"turn{turn}"
            ttft = _first_token_s(backend, key, prompt)
            for _ in range(31):
                backend.step()
            history = list(backend._by_key[key].ids)
            backend.remove([key])
            rows.append(
                {
                    "prefix_cache": "on" if cached else "off",
                    "turn": turn,
                    "prompt_tokens": len(prompt),
                    "ttft_ms": round(ttft * 1000, 1),
                    "cached_tokens": backend.prefix.stats.hit_tokens,
                }
            )
        backend.close()
    return rows


def fused(model: BenchModel, *, threads: int, step_tokens: int = 512) -> dict[str, Any]:
    backend = _warm_backend(model, threads, max_batch_size=32, step_tokens=step_tokens)
    running = [f"r{i}" for i in range(16)]
    backend.add(running, [_tokens(100 + i, 64, backend.vocab_size) for i in range(16)], [GREEDY] * 16)
    decode_only = []
    for _ in range(8):
        started = time.perf_counter()
        backend.step()
        decode_only.append(time.perf_counter() - started)
    wave = [f"w{i}" for i in range(16)]
    backend.enqueue(wave, [_tokens(200 + i, 64, backend.vocab_size) for i in range(16)], [GREEDY] * 16)
    gaps: list[float] = []
    first_tokens: dict[str, float] = {}
    started_wave = time.perf_counter()
    while len(first_tokens) < len(wave):
        started = time.perf_counter()
        results = backend.step()
        gaps.append(time.perf_counter() - started)
        assert all(key in results for key in running)  # never stalled
        for key in wave:
            if key in results and key not in first_tokens:
                first_tokens[key] = time.perf_counter() - started_wave
    backend.remove([*running, *wave])
    backend.close()
    step = statistics.median(decode_only)
    return {
        "step_tokens": step_tokens,
        "decode_step_ms": round(step * 1000, 1),
        "mixed_steps": len(gaps),
        "itl_during_wave_max_ms": round(max(gaps) * 1000, 1),
        "itl_during_wave_over_decode_step": round(max(gaps) / step, 2),
        "wave_ttft_p50_ms": round(statistics.median(first_tokens.values()) * 1000, 1),
        "wave_ttft_max_ms": round(max(first_tokens.values()) * 1000, 1),
    }


def parallel(
    model: BenchModel, *, threads: int, n: int = 4, prompt_tokens: int = 1024
) -> list[dict[str, Any]]:
    """n samples of one prompt (n > 1, best_of: prefilled once, the others fork from it)
    against n different prompts of the same length (n prefills): prompt tokens computed and
    the time until every sequence has its first token. No prefix cache: the fork alone."""
    backend = _warm_backend(model, threads, max_batch_size=n)
    rows = []
    for shared in (True, False):
        prompts = [_tokens(300 if shared else 300 + i, prompt_tokens, backend.vocab_size) for i in range(n)]
        keys = [f"p{i}" for i in range(n)]
        params = [SamplingParams(max_tokens=64, temperature=1.0, seed=i) for i in range(n)]
        started = time.perf_counter()
        backend.enqueue(keys, prompts, params)
        firsts: set[str] = set()
        computed = 0
        while len(firsts) < n:
            firsts.update(backend.step())
            computed += backend.last_step_prefill
        rows.append(
            {
                "prompts": "one prompt, n samples" if shared else "n different prompts",
                "n": n,
                "prompt_tokens": prompt_tokens,
                "prefilled_tokens": computed,
                "all_first_tokens_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        )
        backend.remove(keys)
    backend.close()
    return rows


def measure(model: BenchModel, *, threads: int) -> dict[str, Any]:
    turns = session(model, threads=threads)
    on = {row["turn"]: row for row in turns if row["prefix_cache"] == "on"}
    off = {row["turn"]: row for row in turns if row["prefix_cache"] == "off"}
    return {
        "session": turns,
        "turn3_ttft_cached_over_uncached": round(on[3]["ttft_ms"] / off[3]["ttft_ms"], 3),
        "fused": [fused(model, threads=threads, step_tokens=budget) for budget in (256, 512)],
        "parallel": parallel(model, threads=threads),
    }
