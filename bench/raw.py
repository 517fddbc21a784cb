"""Baseline (a): the raw model in one process, no server — the limit Sluice is measured against.

Two ways of running the same equal-length batch (prompt P, N new tokens, greedy):
- ``hf``: transformers' own model forward with its ``DynamicCache`` (the textbook loop);
- ``backend``: Sluice's packed-step backend driven directly (no engine, no streaming), with its
  linear layers on oneDNN-packed weights where the CPU allows (inference/backends/packed_linear.py)
  and the fused Llama step (inference/backends/llama_step.py);
- ``backend-unfused``: the same with transformers' forward for the step (``SLUICE_FUSED_STEP=0``);
- ``backend-plain``: neither, torch's own ``nn.Linear`` (``SLUICE_PACKED_LINEAR=0``), which is
  also the model the ``hf`` loop runs (unfused: transformers' modules as they load).
The limit is the best of them at each batch size.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bench.models import BenchModel
from inference.backends.torch_local import TorchCausalLMBackend
from inference.backends.torch_setup import configure_threads
from inference.sampling_params import SamplingParams


@dataclass
class RawResult:
    method: str
    batch: int
    prefill_ms: float  # the whole batch's prefill
    step_ms: float  # one decode step of the whole batch
    decode_tokens_per_s: float
    total_tokens_per_s: float  # new tokens / (prefill + decode)


def _prompts(batch: int, length: int, vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randint(10, min(vocab, 2000), (batch, length), generator=generator)


@torch.inference_mode()
def hf_loop(model: Any, batch: int, prompt: int, new: int) -> RawResult:
    from transformers import DynamicCache

    ids = _prompts(batch, prompt, model.config.vocab_size)
    cache = DynamicCache(config=model.config)
    started = time.perf_counter()
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    token = logits[:, -1].argmax(-1, keepdim=True)
    prefilled = time.perf_counter()
    for _ in range(new - 1):
        logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
    ended = time.perf_counter()
    return _result("hf", batch, new, started, prefilled, ended)


def backend_loop(
    backend: TorchCausalLMBackend, batch: int, prompt: int, new: int, method: str = "backend"
) -> RawResult:
    ids = _prompts(batch, prompt, backend.vocab_size).tolist()
    keys = [f"raw{i}" for i in range(batch)]
    params = [SamplingParams(max_tokens=new, temperature=0.0)] * batch
    started = time.perf_counter()
    backend.add(keys, ids, params)
    prefilled = time.perf_counter()
    for _ in range(new - 1):
        backend.step()
    ended = time.perf_counter()
    backend.remove(keys)
    return _result(method, batch, new, started, prefilled, ended)


def _result(method: str, batch: int, new: int, started: float, prefilled: float, ended: float) -> RawResult:
    decode = ended - prefilled
    return RawResult(
        method=method,
        batch=batch,
        prefill_ms=round((prefilled - started) * 1000, 2),
        step_ms=round(decode / max(1, new - 1) * 1000, 2),
        decode_tokens_per_s=round(batch * (new - 1) / decode, 1),
        total_tokens_per_s=round(batch * new / (ended - started), 1),
    )


def measure(
    model: BenchModel,
    batches: list[int],
    *,
    prompt: int = 64,
    new: int = 64,
    threads: int = 0,
    repeats: int = 2,
) -> list[dict[str, Any]]:
    """Best of ``repeats`` runs per method and batch size."""
    configure_threads(threads)
    backends = {
        method: TorchCausalLMBackend(
            model.path,
            dtype=model.dtype,
            threads=threads,
            max_batch_size=max(batches),
            eos_token_ids=[],
            packed_linear=packed,
            fused_step=fused,
        )
        for method, packed, fused in (
            ("backend", True, True),
            ("backend-unfused", True, False),
            ("backend-plain", False, False),
        )
    }
    plain_model = backends["backend-plain"].model  # transformers' loop on its own nn.Linear
    for backend in backends.values():
        backend_loop(backend, 2, prompt, 4)  # warm-up
    hf_loop(plain_model, 2, prompt, 4)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        for method in ("hf", *backends):
            runs = [
                hf_loop(plain_model, batch, prompt, new)
                if method == "hf"
                else backend_loop(backends[method], batch, prompt, new, method)
                for _ in range(repeats)
            ]
            rows.append(asdict(max(runs, key=lambda r: r.decode_tokens_per_s)))
    for backend in backends.values():
        backend.close()
    return rows
