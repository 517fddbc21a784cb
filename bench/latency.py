"""Single-client latency of a running Sluice: time to first token and decode speed of one
stream, through the full HTTP/SSE path (what the README reports).

    python -m bench.latency --base-url http://127.0.0.1:8000 --key sk-sl-... [--requests 30]

With no --key, the demo key that `make run` saved in var/run/demo-credentials.json is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import openai

from config import env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default=f"http://127.0.0.1:{env.get_int('SLUICE_PORT', 8000)}")
    parser.add_argument("--key")
    parser.add_argument("--model", default=env.model_name())
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    key = args.key or json.loads((env.var_dir() / "run" / "demo-credentials.json").read_text())["api_key"]
    client = openai.OpenAI(base_url=f"{args.base_url}/v1", api_key=key, max_retries=0)
    ttft: list[float] = []
    rate: list[float] = []
    e2e: list[float] = []
    for i in range(args.requests + 3):
        started = time.perf_counter()
        first = last = None
        completion = 0
        stream = client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": f"Tell me about rivers. ({i})"}],
            max_tokens=args.max_tokens,
            temperature=0.7,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.perf_counter()
                first = first or last
            if chunk.usage:
                completion = chunk.usage.completion_tokens
        if i < 3 or first is None or last is None:
            continue  # warm-up
        ttft.append(first - started)
        e2e.append(time.perf_counter() - started)
        if last > first:
            rate.append((completion - 1) / (last - first))
    result = {
        "requests": len(ttft),
        "max_tokens": args.max_tokens,
        "ttft_p50_ms": round(statistics.median(ttft) * 1000, 1),
        "ttft_p99_ms": round(percentile(ttft, 0.99) * 1000, 1),
        "decode_tokens_per_s_p50": round(statistics.median(rate), 1),
        "e2e_p50_ms": round(statistics.median(e2e) * 1000, 1),
    }
    print("| metric | value |\n|---|---|")
    for name, value in result.items():
        print(f"| {name} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
