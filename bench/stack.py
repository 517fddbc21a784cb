"""A throw-away Sluice stack for one benchmark run: its own embedded Postgres and Valkey in a
temporary directory, one API key, and web/worker processes restarted per configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.models import BenchModel
from config.embedded import EmbeddedPostgres, EmbeddedValkey
from config.env import BASE_DIR
from config.processes import ServerProcess, free_port, wait_ready, web_process, worker_process


class Stack:
    def __init__(self, *, threads: int, log_dir: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
        self.log_dir = log_dir or self.root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.pg = EmbeddedPostgres(self.root / "pg").start()
        self.pg.ensure_database("sluice")
        self.valkey = EmbeddedValkey(self.root / "valkey", persist=False).start()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": self.pg.url("sluice"),
            "REDIS_URL": self.valkey.url(),
            "SLUICE_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.manage("migrate", "--noinput", "-v", "0")
        self.key = (
            self.manage("createapikey", "--user", "bench", "--policy", "unlimited").strip().splitlines()[-1]
        )
        self.processes: list[ServerProcess] = []

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def model_env(self, model: BenchModel, max_batch_size: int) -> dict[str, str]:
        return {
            **self.env,
            "SLUICE_MODEL_NAME": model.name,
            "SLUICE_MODEL_PATH": str(model.path),
            "SLUICE_DTYPE": model.dtype,
            "SLUICE_MAX_BATCH_SIZE": str(max_batch_size),
            "SLUICE_MAX_NEW_TOKENS": "4096",
            # Only this model: a version of another name (bench.gateway_overhead's "front") has
            # workers of its own.
            "SLUICE_WORKER_MODELS": model.name,
        }

    def start(
        self,
        model: BenchModel,
        *,
        max_batch_size: int,
        worker: str = "sluice",
        label: str = "",
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> str:
        """Start web + worker(s) for ``model``; return the base URL once ready. Several
        workers share the cores (``threads // workers`` torch threads each)."""
        self.stop()
        env = {**self.model_env(model, max_batch_size), **(extra_env or {})}
        port = free_port()
        # The web process gets one torch-free core's worth of work; the worker the cores.
        web = web_process({**env, "OMP_NUM_THREADS": "1"}, port, self.log_dir)
        web.argv += ["--no-access-log", "--log-level", "warning"]
        threads = str(max(1, self.threads // max(1, workers)))
        worker_env = {**env, "SLUICE_TORCH_THREADS": threads, "OMP_NUM_THREADS": threads}
        name = f"{label or worker}-{model.name}"
        if workers > 1:
            procs = [
                worker_process(
                    worker_env, model=model.name, name=f"{name}-{i}", log_dir=self.log_dir,
                    max_batch_size=max_batch_size,
                )
                for i in range(workers)
            ]  # fmt: skip
            self.processes = [web.start(), *(proc.start() for proc in procs)]
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(base_url, self.processes, timeout=300)
            return base_url
        if worker == "celery-batches":
            argv = [
                sys.executable, "-m", "celery", "-A", "bench.celery_batches_worker", "worker",
                "-P", "threads", "-c", "1", "--prefetch-multiplier", str(max_batch_size),
                "-Q", f"sluice.model.{model.name}",
                "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "WARNING",
            ]  # fmt: skip
            proc = ServerProcess(name, argv, {**worker_env, "SLUICE_WORKER_PRELOAD": "0"}, self.log_dir)
        else:
            proc = worker_process(
                worker_env, model=model.name, name=name, log_dir=self.log_dir, max_batch_size=max_batch_size
            )
        self.processes = [web.start(), proc.start()]
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, self.processes, timeout=300)
        return base_url

    def stop(self) -> None:
        for proc in self.processes:
            proc.stop(timeout=30)
        self.processes = []

    def close(self) -> None:
        self.stop()
        self.valkey.stop()
        self.pg.stop()
        shutil.rmtree(self.root, ignore_errors=True)
