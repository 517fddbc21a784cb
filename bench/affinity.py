"""Session affinity over the full HTTP path: two workers serve one model, several chat
sessions talk to it at once, and the time to first token of each turn is measured with
affinity on (a session's next turn goes to the worker whose prefix cache holds its history)
and off (pull only: any free worker takes it, and must prefill the whole history unless it
happens to have run the turn before).

Each session: a first message of ``first_tokens`` tokens (a pasted document), then short
follow-ups; ``max_tokens`` new tokens per turn; turns of one session back to back, sessions
concurrent. Reported: TTFT p50/mean per turn number and how often a turn ran where its
predecessor had (from the jobs' timelines).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from typing import Any

import httpx
import redis

from bench.load import build_prompt
from bench.models import BenchModel
from bench.stack import Stack
from inference.prompts import ModelInfo


async def _turn(
    client: httpx.AsyncClient, base: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[float, str]:
    started = time.perf_counter()
    first: float | None = None
    job_id = ""
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if "error" in payload:
                raise RuntimeError(payload["error"]["message"])
            job_id = job_id or str(payload.get("id", ""))
            if first is None and payload.get("choices"):
                first = time.perf_counter()
    if first is None:
        raise RuntimeError("no tokens streamed")
    return first - started, job_id


async def _sessions(
    base: str, key: str, model: BenchModel, *, sessions: int, turns: int, first_tokens: int, max_tokens: int
) -> list[list[tuple[float, str]]]:
    info = ModelInfo(model.name, model.path)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(index: int) -> list[tuple[float, str]]:
            created = await client.post(
                f"{base}/api/v1/sessions", json={"title": f"s{index}"}, headers=headers
            )
            created.raise_for_status()
            session_id = created.json()["id"]
            out = []
            for turn in range(turns):
                text = (
                    build_prompt(info, first_tokens, salt=index)
                    if turn == 0
                    else f"Turn {turn} of session {index}: and then?"
                )
                body = {
                    "model": model.name,
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "ignore_eos": True,
                    "stream": True,
                    "session_id": session_id,
                }
                out.append(await _turn(client, base, headers, body))
            return out

        return list(await asyncio.gather(*(one(i) for i in range(sessions))))


def _workers_up(client: redis.Redis, count: int) -> bool:
    return len(list(client.scan_iter(match="sluice:worker:*"))) >= count


def measure(
    model: BenchModel,
    stack: Stack,
    *,
    sessions: int = 4,
    turns: int = 6,
    first_tokens: int = 1200,
    max_tokens: int = 32,
) -> dict[str, Any]:
    client = redis.Redis.from_url(stack.valkey.url())
    rows: list[dict[str, Any]] = []
    by_mode: dict[str, list[float]] = {}
    for mode in ("on", "off"):
        base = stack.start(
            model, max_batch_size=8, workers=2, label=f"affinity-{mode}",
            extra_env={"SLUICE_AFFINITY": "1" if mode == "on" else "0"},
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not _workers_up(client, 2):
            if time.monotonic() > deadline:
                raise TimeoutError("the second worker did not come up")
            time.sleep(0.2)
        results = asyncio.run(
            _sessions(
                base, stack.key, model, sessions=sessions, turns=turns, first_tokens=first_tokens,
                max_tokens=max_tokens,
            )
        )  # fmt: skip
        workers = _job_workers(stack, [job for session in results for _, job in session])
        same = sum(
            1
            for session in results
            for (_, before), (_, after) in itertools.pairwise(session)
            if workers.get(before) and workers.get(before) == workers.get(after)
        )
        for turn in range(turns):
            ttfts = [session[turn][0] * 1000 for session in results]
            rows.append(
                {
                    "affinity": mode,
                    "turn": turn + 1,
                    "ttft_p50_ms": round(statistics.median(ttfts), 1),
                    "ttft_mean_ms": round(statistics.fmean(ttfts), 1),
                }
            )
        by_mode[mode] = [session[t][0] * 1000 for session in results for t in range(1, turns)]
        rows.append(
            {
                "affinity": mode,
                "turn": f"2-{turns}",
                "ttft_p50_ms": round(statistics.median(by_mode[mode]), 1),
                "ttft_mean_ms": round(statistics.fmean(by_mode[mode]), 1),
                "same_worker_as_turn_before": f"{same}/{sessions * (turns - 1)}",
            }
        )
        stack.stop()
        for key in client.scan_iter(match="sluice:worker:*"):
            client.delete(key)  # a beat left by a stopped worker: the next mode waits for its own
    later_on = statistics.fmean(by_mode["on"])
    later_off = statistics.fmean(by_mode["off"])
    return {
        "sessions": sessions,
        "turns": turns,
        "first_tokens": first_tokens,
        "max_tokens": max_tokens,
        "workers": 2,
        "rows": rows,
        "later_turns_ttft_on_over_off": round(later_on / later_off, 3) if later_off else None,
    }


def _job_workers(stack: Stack, job_ids: list[str]) -> dict[str, str]:
    """The worker of each job (chat completion ids are ``chatcmpl-<job id>``)."""
    ids = [j.removeprefix("chatcmpl-") for j in job_ids if j]
    if not ids:
        return {}
    script = (
        "import json,sys\n"
        "from inference.models import Job\n"
        f"ids={json.dumps(ids)}\n"
        "rows = Job.objects.filter(id__in=ids).values_list('id', 'worker')\n"
        "print(json.dumps({i.hex: w for i, w in rows}))\n"
    )
    out = stack.manage("shell", "-c", script)
    found: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return {job: found.get(job.removeprefix("chatcmpl-"), "") for job in job_ids}
