"""Load from separate processes (multiprocessing, spawn): many threads fire at once, so that
correctness under concurrency is tested across processes, not just threads of one process.

Only stdlib, redis, httpx and inference.admission.ratelimit are imported here (no Django in the
children).
"""

from __future__ import annotations

import threading
import time
from typing import Any


def _fire_together(start_at: float, n: int, one: Any) -> list[Any]:
    results: list[Any] = [None] * n

    def run(index: int) -> None:
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        results[index] = one()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def admit_many(
    redis_url: str, subject: str, model: str, limits: dict[str, Any], cost: int, n: int, start_at: float
) -> list[str]:
    """``n`` threads each make one admission attempt at ``start_at``; their outcomes."""
    import redis

    from inference.admission.ratelimit import Capacity, Limits, RateLimiter, Ticket

    limiter = RateLimiter(redis.Redis.from_url(redis_url, max_connections=n + 4))
    policy = Limits(**limits)

    def one() -> str:
        ticket = Ticket(
            subject=subject,
            model=model,
            cost=cost,
            limits=policy,
            capacity=Capacity(),
            fair_key=subject,
            lease_s=60,
        )
        return limiter.attempt(ticket).outcome.value

    return _fire_together(start_at, n, one)


def stream_many(base_url: str, key: str, body: dict[str, Any], n: int, start_at: float) -> list[int]:
    """``n`` threads each POST a streaming /v1/completions at ``start_at`` and read it to the
    end; their HTTP statuses."""
    import httpx

    def one() -> int:
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST", f"{base_url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response,
        ):
            for _ in response.iter_bytes():
                pass
            return response.status_code

    return _fire_together(start_at, n, one)
