"""Model-version dtypes: the same model as float32, bfloat16 and int8 (dynamic quantization),
raw decode tokens/s through Sluice's backend at batch 1 and 32 (prompt 64, 64 new tokens),
as ratios to float32. What an operator weighs when choosing a version's dtype on CPU.

    python -m bench --only dtypes
"""

from __future__ import annotations

import gc
import os
from dataclasses import replace
from typing import Any

from bench.models import BenchModel, demo_model, llama_110m
from bench.raw import backend_loop
from inference.backends.torch_local import TorchCausalLMBackend
from inference.backends.torch_setup import configure_threads

DTYPES = ("float32", "bfloat16", "int8")


def measure(
    *, threads: int = 0, batches: tuple[int, ...] = (1, 32), prompt: int = 64, new: int = 64
) -> list[dict[str, Any]]:
    configure_threads(threads or len(os.sched_getaffinity(0)))
    rows: list[dict[str, Any]] = []
    for base in (demo_model(), llama_110m()):
        reference: dict[int, float] = {}
        for dtype in DTYPES:
            model: BenchModel = replace(base, dtype=dtype)
            backend = TorchCausalLMBackend(
                model.path, dtype=dtype, threads=threads, max_batch_size=max(batches), eos_token_ids=[]
            )
            backend_loop(backend, 2, prompt, 4)  # warm-up
            for batch in batches:
                best = max(
                    (backend_loop(backend, batch, prompt, new) for _ in range(2)),
                    key=lambda r: r.decode_tokens_per_s,
                )
                if dtype == "float32":
                    reference[batch] = best.decode_tokens_per_s
                rows.append(
                    {
                        "model": base.name,
                        "dtype": dtype,
                        "batch": batch,
                        "step_ms": best.step_ms,
                        "decode_tokens_per_s": best.decode_tokens_per_s,
                        "vs_float32": round(best.decode_tokens_per_s / reference[batch], 2),
                    }
                )
            backend.close()
            del backend
            gc.collect()
    return rows
