"""``make run``: the whole of Sluice in one foreground process.

Starts the embedded Postgres+pgvector and Valkey (unless DATABASE_URL/REDIS_URL name servers),
migrates, builds the demo model if it is missing, ensures an admin login and a demo API key,
starts the ASGI web server (uvicorn) and a Celery worker, waits until they answer, prints
how to use them, and on Ctrl-C/SIGTERM stops everything in order.

Supervision: a child that dies is restarted with capped exponential backoff (1 s, 2 s, 4 s ...
60 s), forever; one that crashes again and again within a minute is reported loudly (the log,
``/readyz`` and the ops dashboard, through ``sluice:supervisor`` in Redis) while the others
keep serving. The embedded Postgres and Valkey it started are watched the same way and started
again (same data, same socket and port) when they die; the web and workers reconnect by
themselves, and no accepted job is lost (Valkey keeps an append-only file; jobs in flight are
finished or re-sent by the reconciler).

This process owns the embedded servers (Valkey dies with the process that started it), so it
stays in the foreground for as long as Sluice runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis

from config import env
from config.embedded import EmbeddedPostgres, EmbeddedValkey
from config.processes import default_concurrency, embeddings_worker_argv, worker_argv
from inference.core.keys import SUPERVISOR_KEY

logger = logging.getLogger("sluice.run")
PY = sys.executable


CRASH_WINDOW_S = 60.0  # crashes counted over this window
CRASH_LOOP = 3  # this many in the window: a crash loop (reported, backoff at its cap soon)
MAX_BACKOFF_S = 60.0


def backoff_s(crashes: int) -> float:
    """SLUICE_RESTART_BACKOFF_S (1 s), doubled per crash in the window, at most a minute."""
    base = env.get_float("SLUICE_RESTART_BACKOFF_S", 1.0)
    return float(min(MAX_BACKOFF_S, base * 2 ** max(0, crashes - 1)))


@dataclass
class Restarts:
    """When a supervised thing crashed, and when it may be started again."""

    crashes: list[float] = field(default_factory=list)
    next_start: float | None = None
    last_exit: str = ""
    started_at: float = 0.0

    def crashed(self, now: float, exit_info: str) -> float:
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        self.last_exit = exit_info
        delay = backoff_s(len(self.crashes))
        self.next_start = now + delay
        return delay

    @property
    def looping(self) -> bool:
        return len(self.crashes) >= CRASH_LOOP

    def settle(self, now: float) -> None:
        """Up for a whole window: its earlier crashes no longer count."""
        if self.crashes and now - self.started_at > CRASH_WINDOW_S:
            self.crashes = []


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: Restarts = field(default_factory=Restarts)

    def start(self) -> None:
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which then stops the
        # children in order (web first, so no new jobs arrive while the worker drains).
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=env.BASE_DIR, start_new_session=True)
        self.restarts.started_at = time.monotonic()
        self.restarts.next_start = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait(5)


class Supervisor:
    def __init__(self) -> None:
        self.var = env.var_dir()
        self.port = env.get_int("SLUICE_PORT", 8000)
        self.host = env.get_str("SLUICE_HOST", "127.0.0.1")
        self.pg: EmbeddedPostgres | None = None
        self.valkey: EmbeddedValkey | None = None
        self.children: list[Child] = []
        self.stopping = False
        self.service_restarts: dict[str, Restarts] = {"postgres": Restarts(), "valkey": Restarts()}
        self.redis_url = ""
        self._redis: Any = None

    # -- services --
    def start_services(self) -> dict[str, str]:
        urls: dict[str, str] = {}
        embedded: dict[str, str] = {}
        database_url = env.get_opt("DATABASE_URL")
        if database_url:
            urls["DATABASE_URL"] = database_url
        else:
            self.pg = EmbeddedPostgres(self.var / "pg").start()
            self.pg.ensure_database("sluice")
            urls["DATABASE_URL"] = embedded["DATABASE_URL"] = self.pg.url("sluice")
            print(f"  postgres  embedded (PostgreSQL 18 + pgvector), socket in {self.pg.socket_dir}")
        redis_url = env.get_opt("REDIS_URL")
        if redis_url:
            urls["REDIS_URL"] = redis_url
        else:
            self.valkey = EmbeddedValkey(self.var / "valkey").start()
            urls["REDIS_URL"] = embedded["REDIS_URL"] = self.valkey.url()
            print(f"  valkey    embedded on 127.0.0.1:{self.valkey.port}")
        services_file = env.services_file()
        services_file.parent.mkdir(parents=True, exist_ok=True)
        services_file.write_text("".join(f"{k}={v}\n" for k, v in embedded.items()))
        return urls

    def stop_services(self) -> None:
        env.services_file().unlink(missing_ok=True)
        if self.valkey is not None:
            self.valkey.stop()
        if self.pg is not None:
            self.pg.stop()

    # -- steps --
    def manage(self, child_env: dict[str, str], *args: str, capture: bool = False) -> str:
        result = subprocess.run(
            [PY, "manage.py", *args],
            env=child_env,
            cwd=env.BASE_DIR,
            check=False,
            stdout=subprocess.PIPE if capture else None,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"`manage.py {' '.join(args)}` failed (exit {result.returncode})")
        return result.stdout or ""

    def child_env(self, urls: dict[str, str]) -> dict[str, str]:
        child = dict(os.environ)
        child.update(urls)
        child.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
        child.setdefault("PYTHONUNBUFFERED", "1")
        return child

    def run(self) -> int:
        started = time.monotonic()
        print("Sluice: starting")
        urls = self.start_services()
        self.redis_url = urls["REDIS_URL"]
        child_env = self.child_env(urls)
        self.manage(child_env, "migrate", "--noinput", "-v", "0")
        debug = env.debug()
        if not debug:
            # Hashed, compressed copies in the var dir; only what changed since the last start.
            self.manage(child_env, "collectstatic", "--noinput", "-v", "0")
        model_path = env.model_path()
        if not (model_path / "config.json").exists():
            if env.get_opt("SLUICE_MODEL_PATH"):
                raise SystemExit(f"SLUICE_MODEL_PATH={model_path} is not a model directory (no config.json)")
            print(f"  model     building the demo model in {model_path} (first run only, < 3 minutes)")
            self.manage(child_env, "build_demo_model")
        creds = json.loads(
            self.manage(child_env, "ensure_demo_access", capture=True).strip().splitlines()[-1]
        )

        batch = env.get_int("SLUICE_MAX_BATCH_SIZE", 32)
        model_name = env.model_name()
        worker_env = dict(child_env)
        cores = len(os.sched_getaffinity(0))
        # The worker's engine gets the cores; the web process needs little CPU.
        worker_env.setdefault("OMP_NUM_THREADS", str(cores))
        self.children = [
            Child(
                "web",
                [
                    PY,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--timeout-graceful-shutdown",
                    "5",
                    "--no-server-header",
                ],
                {**child_env, "OMP_NUM_THREADS": "1"},
            ),
            Child(
                "worker", worker_argv(model=model_name, concurrency=default_concurrency(batch)), worker_env
            ),
            # Knowledge-base ingestion and query embeddings (all-MiniLM-L6-v2), one thread.
            Child(
                "embeddings",
                embeddings_worker_argv(),
                {**child_env, "SLUICE_WORKER_ROLE": "embeddings", "OMP_NUM_THREADS": "1"},
            ),
        ]
        for child in self.children:
            child.start()
        base = f"http://{self.host}:{self.port}"
        if not self.wait_ready(base, timeout=180):
            if self.stopping:
                return 0
            print("Sluice did not become ready; see the logs above.", file=sys.stderr)
            return 1
        key = creds["api_key"]
        mode = "  DEBUG on (SLUICE_DEBUG=1): for development only" if debug else ""
        print(
            f"""
Sluice is ready ({time.monotonic() - started:.1f}s){mode}
  API        {base}/v1  (OpenAI)   {base}/generate  (TGI)   {base}/api/v1/jobs  (jobs)
  WebSocket  ws://{self.host}:{self.port}/ws/v1/jobs/
  Admin      {base}/admin/   login: {creds["admin_user"]} / {creds["admin_password"]}
  Dashboard  {base}/dashboard/
  API docs   {base}/api/docs/   schema: {base}/api/schema/
  API key    {key}

Try:
  curl -N {base}/v1/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{model_name}", "stream": true,
         "messages": [{{"role": "user", "content": "Tell me about rivers."}}]}}'

Ctrl-C stops everything.""",
            flush=True,
        )
        return self.watch()

    def wait_ready(self, base: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            for child in self.children:
                if not child.alive():
                    print(f"{child.name} exited during start-up", file=sys.stderr)
                    return False
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:  # noqa: S310 - our own URL
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        return False

    def watch(self) -> int:
        """Keep everything running until asked to stop; never give up on a child."""
        while not self.stopping:
            now = time.monotonic()
            self.watch_services(now)
            for child in self.children:
                if self.stopping:
                    break
                if child.alive():
                    child.restarts.settle(now)
                    continue
                restarts = child.restarts
                if restarts.next_start is None:
                    code = child.process.returncode if child.process else "?"
                    delay = restarts.crashed(now, f"exit code {code}")
                    loud = "CRASH LOOP: " if restarts.looping else ""
                    print(
                        f"{loud}{child.name} exited (code {code}; {len(restarts.crashes)} time(s) in "
                        f"the last {CRASH_WINDOW_S:.0f}s); restarting in {delay:.0f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.report()
                elif now >= restarts.next_start:
                    child.start()
            self.report()
            time.sleep(0.5)
        return 0

    def watch_services(self, now: float) -> None:
        """Start the embedded servers again when they die (same data, socket and port)."""
        for name, server in (("postgres", self.pg), ("valkey", self.valkey)):
            if server is None or server.alive():
                if server is not None:
                    self.service_restarts[name].settle(now)
                continue
            restarts = self.service_restarts[name]
            if restarts.next_start is None:
                delay = restarts.crashed(now, "died")
                print(f"embedded {name} died; starting it again in {delay:.0f}s", file=sys.stderr, flush=True)
                continue
            if now < restarts.next_start:
                continue
            try:
                if isinstance(server, EmbeddedValkey):
                    server.start()
                else:
                    server.restart()
                restarts.started_at = time.monotonic()
                restarts.next_start = None
                print(f"embedded {name} is back", file=sys.stderr, flush=True)
            except Exception as exc:
                delay = restarts.crashed(time.monotonic(), f"restart failed: {exc}")
                print(
                    f"embedded {name} did not start ({exc}); retrying in {delay:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )

    def report(self) -> None:
        """What is crashing, for /readyz and the dashboard (best effort: Redis may be down)."""
        state = {
            child.name: {
                "crashes": len(child.restarts.crashes),
                "crash_loop": child.restarts.looping,
                "last_exit": child.restarts.last_exit,
                "restarting": child.restarts.next_start is not None,
            }
            for child in self.children
            if child.restarts.crashes
        }
        for name, restarts in self.service_restarts.items():
            if restarts.crashes:
                state[name] = {
                    "crashes": len(restarts.crashes),
                    "crash_loop": restarts.looping,
                    "last_exit": restarts.last_exit,
                    "restarting": restarts.next_start is not None,
                }
        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
            if state:
                self._redis.set(SUPERVISOR_KEY, json.dumps({"ts": time.time(), "processes": state}), ex=30)
            else:
                self._redis.delete(SUPERVISOR_KEY)
        except Exception:  # noqa: S110 - reporting must never stop supervising
            pass

    def shutdown(self) -> None:
        self.stopping = True
        for child in self.children:  # web first, then the worker (which finishes its batch)
            child.stop(timeout=30 if child.name in ("worker", "embeddings") else 10)
        self.stop_services()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    supervisor = Supervisor()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not supervisor.stopping:
            print("\nSluice: stopping…", flush=True)
            supervisor.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 1
    try:
        code = supervisor.run()
        if supervisor.stopping:
            code = 0
    finally:
        supervisor.shutdown()
        print("Sluice: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
