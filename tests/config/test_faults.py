"""Fault injection on a whole `make run` (the real supervisor, its embedded Postgres and Valkey,
its web and worker) under load: Valkey, Postgres, the worker and the web are each killed with
SIGKILL while jobs are being submitted and generated.

What must hold: no accepted job is lost or doubled (each ends succeeded, with exactly its
tokens, once); while a store is down requests get 503 + Retry-After, never 500; /readyz turns
503 at once and back to 200 by itself; nobody restarts anything by hand; and the web's pool
has no connection checked out once the load stops.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.processes import wait_until
from tests.config.test_run import make_run
from tests.support.sse import iter_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKENS = 100


class Load:
    """Submits background jobs continuously (native API, each with an Idempotency-Key, retried
    under the same key after any failure) and records every answer it gets."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"}
        self.accepted: list[str] = []
        self.statuses: Counter[int | str] = Counter()
        self.running = threading.Event()
        self.running.set()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _submit(self) -> None:
        key = f"load-{uuid.uuid4()}"
        body = {"prompt": "Once upon a time", "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
        while not self.stopped:
            try:
                response = httpx.post(
                    f"{self.base}/api/v1/jobs",
                    json=body,
                    headers={**self.headers, "Idempotency-Key": key},
                    timeout=30,
                )
            except httpx.HTTPError as exc:
                self.statuses[type(exc).__name__] += 1
                time.sleep(0.5)
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 202:
                job_id = response.json()["id"]
                if job_id not in self.accepted:
                    self.accepted.append(job_id)
                return
            assert response.status_code in (429, 503), response.text
            time.sleep(float(response.headers.get("Retry-After", "1")) / 4)

    def _run(self) -> None:
        while not self.stopped:
            self.running.wait()
            self._submit()
            time.sleep(1.5)

    def stop(self) -> None:
        self.stopped = True
        self.running.set()
        self.thread.join(60)


def pid_of(pattern: str) -> int:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout.split()
    assert out, f"no process matches {pattern!r}"
    return int(out[0])


def readyz(base: str) -> int:
    try:
        return httpx.get(f"{base}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def outage_answers(base: str, headers: dict[str, str]) -> list[httpx.Response]:
    """What clients get while /readyz says a store is down (at least one answer)."""
    answers: list[httpx.Response] = []
    while readyz(base) == 503 or not answers:
        with contextlib.suppress(httpx.HTTPError):
            answers.append(
                httpx.post(
                    f"{base}/v1/chat/completions",
                    json={
                        "model": "sluice-demo",
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 2,
                    },
                    headers=headers,
                    timeout=30,
                )
            )
        if len(answers) >= 50:
            break
    return answers


def in_use(base: str) -> int:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    match = re.search(r'^sluice_db_pool_connections\{state="in_use"\} (\S+)$', text, re.MULTILINE)
    return int(float(match.group(1))) if match else -1


def follow(base: str, headers: dict[str, str], job_id: str) -> list[Any]:
    """Every event of a job, reconnecting with Last-Event-ID whenever the stream breaks."""
    events: list[Any] = []
    last = "0-0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with httpx.stream(
                "GET",
                f"{base}/api/v1/jobs/{job_id}/events",
                headers={**headers, "Last-Event-ID": last},
                timeout=30,
            ) as response:
                if response.status_code != 200:
                    time.sleep(0.5)
                    continue
                for event in iter_events(response):
                    events.append(event)
                    last = event.id or last
                    if event.event == "end":
                        return events
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end")


@pytest.mark.timeout(900)
def test_kill_valkey_postgres_worker_and_web_under_load(demo_model_dir: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    with make_run(
        demo_model_dir,
        var,
        SLUICE_JOB_LEASE_S="3",
        SLUICE_RECONCILE_INTERVAL_S="1",
        SLUICE_RESTART_BACKOFF_S="3",  # each store stays down a few seconds: the outage is seen
        SLUICE_SSE_KEEPALIVE_S="1",
        SLUICE_METRICS_FLUSH_S="1",
    ) as run:
        base = f"http://127.0.0.1:{run.port}"
        key = run.banner("API key").split()[-1]
        headers = {"Authorization": f"Bearer {key}"}
        services = dict(
            line.split("=", 1) for line in (var / "run" / "services.env").read_text().splitlines()
        )
        valkey_port = services["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        load = Load(base, key)
        load.thread.start()
        wait_until(lambda: len(load.accepted) >= 3, timeout=60, what="the load to start")

        def fault(name: str, kill: Any, *, store: bool) -> None:
            before = len(load.accepted)
            kill()
            if store:
                wait_until(
                    lambda: readyz(base) == 503, timeout=10, interval=0.02, what=f"readyz to see {name} down"
                )
                for answer in outage_answers(base, headers):
                    assert answer.status_code != 500, (name, answer.text)
                    if answer.status_code == 503:
                        assert answer.headers["Retry-After"], name
                        assert answer.json()["error"]["code"] in ("service_unavailable", "model_unavailable")
            wait_until(lambda: readyz(base) == 200, timeout=120, interval=0.2, what=f"recovery from {name}")
            wait_until(lambda: len(load.accepted) > before + 1, timeout=120, what=f"new jobs after {name}")

        # A long job followed over SSE through the Valkey outage.
        long_id = httpx.post(
            f"{base}/api/v1/jobs",
            json={"prompt": "The river", "max_tokens": 400, "temperature": 0, "ignore_eos": True},
            headers=headers,
        ).json()["id"]
        followed: list[Any] = []
        follower = threading.Thread(
            target=lambda: followed.extend(follow(base, headers, long_id)), daemon=True
        )
        follower.start()

        fault(
            "valkey",
            lambda: os.kill(pid_of(f"valkey-server 127.0.0.1:{valkey_port}"), signal.SIGKILL),
            store=True,
        )
        pg_pid = int((var / "pg" / "postmaster.pid").read_text().split()[0])
        fault("postgres", lambda: os.kill(pg_pid, signal.SIGKILL), store=True)
        # Quiet for a moment: no connection may stay checked out in the web process.
        load.running.clear()
        wait_until(lambda: in_use(base) == 0, timeout=30, what="the web's pool to be back to idle")
        load.running.set()
        fault("worker", lambda: os.killpg(pid_of("celery -A config worker .* -n sluice-demo@"), signal.SIGKILL),
              store=False)  # fmt: skip
        fault("web", lambda: os.kill(pid_of(f"uvicorn config.asgi:application .* --port {run.port}"), signal.SIGKILL),
              store=False)  # fmt: skip
        load.stop()
        follower.join(300)

        # Every accepted job ended exactly once, with exactly its tokens.
        def finished() -> bool:
            jobs = [
                httpx.get(f"{base}/api/v1/jobs/{i}", headers=headers, timeout=30).json()
                for i in load.accepted
            ]
            return all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs)

        try:
            wait_until(finished, timeout=300, interval=1, what="every accepted job to finish")
        except TimeoutError:
            for i in load.accepted:
                job = httpx.get(f"{base}/api/v1/jobs/{i}", headers=headers, timeout=30).json()
                if job["status"] not in ("succeeded", "failed", "cancelled"):
                    print("STUCK", job["id"], job["status"], job["attempts"], job["error"], job["started_at"])
            print(run.output[-6000:])
            raise
        assert 500 not in load.statuses, load.statuses
        for job_id in [*load.accepted, long_id]:
            job = httpx.get(f"{base}/api/v1/jobs/{job_id}", headers=headers, timeout=30).json()
            expected = 400 if job_id == long_id else TOKENS
            assert job["status"] == "succeeded", job
            assert job["usage"]["completion_tokens"] == expected, job
            events = follow(base, headers, job_id)
            tokens = [t for e in events if e.event == "token" for t in e.data["token_ids"]]
            assert len(tokens) == expected, (job_id, len(tokens))
            assert "".join(e.data["text"] for e in events if e.event == "token") == job["output"]["text"]
            assert [e.event for e in events].count("end") == 1
        streamed = [t for e in followed if e.event == "token" for t in e.data["token_ids"]]
        assert len(streamed) == 400 and followed[-1].data["status"] == "succeeded"
        print(f"\n{len(load.accepted)} jobs accepted, answers seen: {dict(load.statuses)}")
