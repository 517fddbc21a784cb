"""Admission limiter benchmark: decisions per second and the latency admission adds.

A throw-away Valkey (embedded, free port). Every decision runs the full admission script: a
policy with request, token, concurrency and daily limits high enough that every request is
admitted (the common case), on many subjects, against one model.

    python -m bench --only ratelimit      (or python -m bench.ratelimit)

- single client, one call at a time: each call waits for its round trip (what a request pays);
- pipelined: one process sends batches of calls per round trip (the limiter's throughput);
- admission latency: the time one admit() takes for a request admitted at once, p50/p99, which
  is what admission adds to a request (the policy itself comes from an in-process cache).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from config.embedded import EmbeddedValkey
from inference.admission.ratelimit import ADMIT, Capacity, Limits, RateLimiter, Ticket, _ticket_keys

LIMITS = Limits(
    policy="bench",
    policy_id=1,
    requests_per_minute=10**6,
    tokens_per_minute=10**9,
    max_concurrent=10**6,
    daily_token_budget=10**12,
    max_queue_wait_s=0,
    burst=1.0,
)


def _ticket(i: int, subjects: int) -> Ticket:
    return Ticket(
        subject=f"bench{i % subjects}",
        model="bench-model",
        cost=128,
        limits=LIMITS,
        capacity=Capacity(capacity=0, queue_cap=10**7),
        fair_key=f"u{i % subjects}",
        lease_s=600,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(seconds: float = 3.0, subjects: int = 1000) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-rl-"))
    valkey = EmbeddedValkey(root / "valkey", persist=False).start()
    try:
        client = redis.Redis.from_url(valkey.url())
        limiter = RateLimiter(client)
        # Warm up (script cache, connections).
        for i in range(200):
            limiter.attempt(_ticket(i, subjects))

        latencies: list[float] = []
        admitted = 0
        i = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            decision = limiter.attempt(_ticket(i, subjects))
            latencies.append(time.perf_counter() - started)
            admitted += decision.outcome.value == "admitted"
            i += 1
        single = len(latencies) / sum(latencies)

        script = client.register_script(ADMIT)
        batch = 128
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                t = _ticket(i, subjects)
                script(keys=_ticket_keys(t), args=limiter._admit_args(t), client=pipe)
                i += 1
            results = pipe.execute()
            done += len(results)
            admitted += sum(1 for r in results if int(r[0]) == 1)
        pipelined = done / (time.perf_counter() - started)
        ms = [x * 1000 for x in latencies]
        return {
            "subjects": subjects,
            "single_client_decisions_per_s": round(single),
            "pipelined_decisions_per_s": round(pipelined),
            "pipeline_batch": batch,
            "admission_latency_p50_ms": round(percentile(ms, 50), 3),
            "admission_latency_p99_ms": round(percentile(ms, 99), 3),
            "admission_latency_mean_ms": round(statistics.fmean(ms), 3),
            "decisions": len(latencies) + done,
            "all_admitted": admitted == len(latencies) + done,
        }
    finally:
        valkey.stop()


def main() -> None:
    result = measure()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
