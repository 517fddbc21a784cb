"""Attention (issue 34): Sluice's native kernel (inference/backends/native/attention.cpp, for
the decode tokens; prefill chunks run SDPA either way) against torch's batched GEMMs (the
fallback, ``SLUICE_NATIVE_ATTENTION=off``), in one run on
one machine, on the ~110M Llama: decode tokens/s and the decode step's time, greedy, equal
prompts, at batch 1, 16 and 64 with 64-token prompts and at batch 1 and 16 with 512-token
prompts (where attention is a larger share of the step), in bfloat16 and float32.

    python -m bench --only attention      # about 6 minutes on 2 cores (+ the model's build)
"""

from __future__ import annotations

import gc
from dataclasses import asdict
from typing import Any

from bench.models import BenchModel
from bench.raw import RawResult, backend_loop
from config import env
from inference.backends import native
from inference.backends.torch_local import TorchCausalLMBackend
from inference.backends.torch_setup import configure_threads

SHAPES = ((64, (1, 16, 64)), (512, (1, 16)))  # (prompt tokens, batches)
NEW = 32


def measure(model: BenchModel, *, threads: int = 0, repeats: int = 2) -> dict[str, Any]:
    configure_threads(threads)
    kernel = native.kernel(env.native_dir())
    rows: list[dict[str, Any]] = []
    for dtype in (model.dtype, "float32"):
        backends = {
            name: TorchCausalLMBackend(
                model.path,
                dtype=dtype,
                threads=threads,
                max_batch_size=max(max(batches) for _, batches in SHAPES),
                eos_token_ids=[],
                native_dir=env.native_dir(),
                native_attention="on" if on else "off",
            )
            for name, on in (("native", True), ("gemm", False))
        }
        for backend in backends.values():
            # Warm-up at the largest shape: the cache's columns grow once, outside the timings.
            for prompt, batches in SHAPES:
                backend_loop(backend, max(batches), prompt, 2)
        for prompt, batches in SHAPES:
            for batch in batches:
                for name, backend in backends.items():
                    best: RawResult = max(
                        (
                            backend_loop(backend, batch, prompt, NEW, backend.attention)
                            for _ in range(repeats)
                        ),
                        key=lambda r: r.decode_tokens_per_s,
                    )
                    rows.append({"dtype": dtype, "prompt": prompt, **asdict(best), "requested": name})
        for backend in backends.values():
            backend.close()
        del backends
        gc.collect()
    ratios = []
    for native_row in (r for r in rows if r["requested"] == "native"):
        gemm = next(
            r
            for r in rows
            if r["requested"] == "gemm"
            and (r["dtype"], r["prompt"], r["batch"])
            == (native_row["dtype"], native_row["prompt"], native_row["batch"])
        )
        ratios.append(
            {
                "dtype": native_row["dtype"],
                "prompt": native_row["prompt"],
                "batch": native_row["batch"],
                "step_ms_native": native_row["step_ms"],
                "step_ms_gemm": gemm["step_ms"],
                "native_over_gemm_tokens_per_s": round(
                    native_row["decode_tokens_per_s"] / gemm["decode_tokens_per_s"], 2
                ),
            }
        )
    return {
        "model": model.name,
        "kernel": kernel.name,
        "isa": kernel.isa,
        "fallback_reason": kernel.reason,
        "new_tokens": NEW,
        "rows": rows,
        "ratios": ratios,
    }
