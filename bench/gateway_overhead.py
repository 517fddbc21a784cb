"""What a gateway in front of an engine costs: the same load three ways, in one run.

- **direct**: the load generator against the upstream engine itself;
- **sluice**: through a Sluice web process whose version "front" has the ``openai`` backend
  pointed at that upstream (its own worker process runs the upstream streams; no torch there);
- **litellm**: through LiteLLM proxy (``litellm[proxy]``, installed on first use into its own
  virtualenv under the var dir, never into the project's), configured with the same upstream,
  no database, one worker.

The upstream is a second Sluice stack (web + model worker) serving the demo model: the engine
peer of the engine issue (vLLM-CPU) is not set up by this bench yet, so a Sluice engine stands in;
what is measured is the difference each gateway adds over talking to that engine directly.
Everything runs on this machine, so a gateway's CPU also slows the engine: that is part of the
overhead a 2-core host sees.

    python -m bench --only gateway            # about 2.5 minutes on 2 cores (+ LiteLLM's install once)
    python -m bench.gateway_overhead --peer none   # direct and sluice only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.load import LevelResult, Workload, run_level
from bench.models import BenchModel, demo_model
from bench.stack import Stack
from config import env as config_env
from config.processes import ServerProcess, free_port, wait_until, web_process, worker_process
from inference.prompts import ModelInfo

FRONT = "front"
LITELLM_SPEC = "litellm[proxy]"


def peers_dir() -> Path:
    return config_env.var_dir() / "peers"


def litellm_bin() -> Path:
    """LiteLLM proxy's CLI in its own virtualenv (created and installed on first use)."""
    venv = peers_dir() / "litellm"
    cli = venv / "bin" / "litellm"
    if not cli.exists():
        print(f"installing {LITELLM_SPEC} into {venv} (once) ...", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True)
    return cli


def _ready(url: str, path: str) -> bool:
    try:
        return httpx.get(f"{url}{path}", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_front(
    stack: Stack, model: BenchModel, upstream: str, *, batch: int
) -> tuple[str, list[ServerProcess]]:
    """A Sluice web + worker serving "front": an openai version whose upstream is ``upstream``."""
    code = (
        "from inference.models import ModelVersion\n"
        f"ModelVersion.objects.filter(served_name={FRONT!r}).delete()\n"
        f"ModelVersion.objects.create(served_name={FRONT!r}, label='bench', path={str(model.path)!r}, "
        f"backend='openai', url={upstream!r}, upstream_model={model.name!r}, api_key={stack.key!r}, "
        f"status='stable', max_batch_size={batch})\n"
    )
    stack.manage("shell", "-c", code)
    env = {
        **stack.model_env(model, batch),
        "SLUICE_WORKER_MODELS": FRONT,
        "OMP_NUM_THREADS": "1",
        "SLUICE_TORCH_THREADS": "1",
    }
    port = free_port()
    web = web_process(env, port, stack.log_dir)
    web.argv += ["--no-access-log", "--log-level", "warning"]
    worker = worker_process(
        env, model=FRONT, name="front-worker", log_dir=stack.log_dir, max_batch_size=batch
    )
    processes = [web.start(), worker.start()]
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(url, "/healthz"), timeout=120, what="the front web server")
    headers = {"Authorization": f"Bearer {stack.key}"}

    def answers() -> bool:
        try:
            response = httpx.post(
                f"{url}/v1/completions",
                json={"model": FRONT, "prompt": "Hi", "max_tokens": 2},
                headers=headers,
                timeout=30,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    wait_until(answers, timeout=180, interval=1.0, what="the front version to answer")
    return url, processes


def start_litellm(stack: Stack, model: BenchModel, upstream: str) -> tuple[str, ServerProcess]:
    cli = litellm_bin()
    config = stack.root / "litellm.yaml"
    # The load generator's ignore_eos is a vLLM extension: "hosted_vllm/" passes it through, so
    # every system generates exactly max_tokens.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": model.name,
                        "litellm_params": {
                            "model": f"hosted_vllm/{model.name}",
                            "api_base": f"{upstream}/v1",
                            "api_key": stack.key,
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False},
                # LiteLLM refuses to start without a master key; no database: keys are not tracked.
                "general_settings": {"master_key": stack.key},
            }
        )
    )
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from the internet at start
        "LITELLM_TELEMETRY": "False",
        "OMP_NUM_THREADS": "1",
    }
    proc = ServerProcess(
        "litellm",
        [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env,
        stack.log_dir,
    ).start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"LiteLLM proxy exited:\n{proc.log_tail()}")
        return _ready(url, "/health/liveliness")

    wait_until(ready, timeout=300, interval=1.0, what="LiteLLM proxy")
    return url, proc


def _added(row: dict[str, Any], ref: dict[str, Any], column: str) -> float | None:
    if row.get(column) is None or ref.get(column) is None:
        return None
    return round(row[column] - ref[column], 2)


def overhead(rows: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    """Per gateway and level: what it adds over direct, and its share of direct's throughput."""
    direct = {r["concurrency"]: r for r in rows if r["system"] == "direct"}
    out = []
    for row in rows:
        base = direct.get(row["concurrency"])
        if row["system"] == "direct" or base is None:
            continue

        out.append(
            {
                "gateway": row["system"],
                "concurrency": row["concurrency"],
                "added_ttft_p50_ms": _added(row, base, "ttft_p50_ms"),
                "added_ttft_p99_ms": _added(row, base, "ttft_p99_ms"),
                "added_itl_p50_ms": _added(row, base, "itl_p50_ms"),
                "added_itl_p99_ms": _added(row, base, "itl_p99_ms"),
                "throughput_over_direct": round(row["output_tokens_per_s"] / base["output_tokens_per_s"], 3)
                if base["output_tokens_per_s"]
                else None,
                "errors": row["errors"],
            }
        )
    return out


STAGES = ("admission_wait_ms", "queue_ms", "prefill_ms", "time_to_first_token_ms")


def stage_medians(stack: Stack, names: list[str]) -> dict[str, dict[str, float | None]]:
    """Median of each timeline stage over the run's jobs, per served name (front: Sluice in
    front of the upstream; the model's name: the upstream's own jobs)."""
    code = (
        "import json, statistics\n"
        "from inference.models import Job\n"
        "from inference.selectors import job_timings\n"
        "out = {}\n"
        f"for name in {names!r}:\n"
        "    rows = [job_timings(j) for j in Job.objects.filter(model=name, status='succeeded')]\n"
        f"    out[name] = {{s: [r[s] for r in rows if r[s] is not None] for s in {STAGES!r}}}\n"
        "    out[name] = {s: statistics.median(v) if v else None for s, v in out[name].items()}\n"
        "print(json.dumps(out))\n"
    )
    return dict(json.loads(stack.manage("shell", "-c", code).strip().splitlines()[-1]))


def measure(
    stack: Stack,
    *,
    levels: list[int],
    peer: str = "litellm",
    model: BenchModel | None = None,
    requests: int = 0,
) -> dict[str, Any]:
    model = model or demo_model()
    info = ModelInfo(model.name, model.path)
    workload = Workload.fixed(64, 32)
    batch = max(levels)
    upstream = stack.start(model, max_batch_size=batch, label="upstream")
    extra: list[ServerProcess] = []
    rows: list[dict[str, Any]] = []
    try:
        front, front_processes = start_front(stack, model, upstream, batch=batch)
        extra += front_processes
        systems = [("direct", upstream, model.name), ("sluice", front, FRONT)]
        if peer == "litellm":
            litellm, proc = start_litellm(stack, model, upstream)
            extra.append(proc)
            systems.append(("litellm", litellm, model.name))
        for concurrency in levels:
            # Interleaved per level, so that the machine's state drifts alike for every system.
            for system, url, name in systems:
                level: LevelResult = asyncio.run(
                    run_level(
                        url,
                        stack.key,
                        name,
                        info,
                        workload,
                        concurrency,
                        requests or max(16, 3 * concurrency),
                    )
                )
                row = {"system": system, **level.summary()}
                rows.append(row)
                print(
                    f"  {system:8} c{concurrency:<3} {row['output_tokens_per_s']:8.1f} tok/s  "
                    f"TTFT p50 {row['ttft_p50_ms']} p99 {row['ttft_p99_ms']} ms  "
                    f"ITL p50 {row['itl_p50_ms']} p99 {row['itl_p99_ms']} ms  errors {row['errors']}",
                    flush=True,
                )
        stages = stage_medians(stack, [FRONT, model.name])
    finally:
        for proc in extra:
            proc.stop(timeout=30)
        stack.stop()
    print(f"  where a request's time goes (median ms, every level): {json.dumps(stages)}", flush=True)
    return {
        "stages_ms": stages,
        "upstream": f"Sluice engine ({model.description}) standing in for the engine peer",
        "workload": workload.name,
        "levels": rows,
        "overhead": overhead(rows, levels),
        "targets": {
            "sluice_added_ttft_p50_ms_c1": "<= 5",
            "sluice_added_ttft_p99_ms_c1": "<= 15",
            "sluice_added_ttft_at_c16_c64": "<= litellm's",
            "sluice_throughput_over_direct": ">= 0.95",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peer", choices=["litellm", "none"], default="litellm")
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stack = Stack(threads=args.threads)
    started = time.time()
    try:
        result = measure(stack, levels=[int(c) for c in args.levels.split(",")], peer=args.peer)
    finally:
        stack.close()
    result["seconds"] = round(time.time() - started, 1)
    from bench.__main__ import table

    print(table(result["overhead"], list(result["overhead"][0]), "gateway overhead over direct"))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
