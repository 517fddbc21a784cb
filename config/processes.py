"""Sluice processes started from Python: the ASGI web server and Celery workers, each with its
output in a log file (used by the end-to-end tests and the benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from config.env import BASE_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A subprocess whose output goes to a log file (shown when a test fails to start it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as a crashed machine would."""
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def web_process(env: dict[str, str], port: int, log_dir: Path) -> ServerProcess:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return ServerProcess(f"web-{port}", argv, env, log_dir)


def worker_argv(
    *, model: str, concurrency: int, hostname: str | None = None, loglevel: str = "WARNING"
) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "config", "worker",
        "-P", "threads", "-c", str(concurrency), "--prefetch-multiplier", "1",
        "-Q", f"sluice.model.{model}", "-n", hostname or f"{model}@%h",
        "--without-gossip", "--without-mingle", "-l", loglevel,
    ]  # fmt: skip


# The same name as settings.SLUICE_EMBEDDING_QUEUE (this module runs before Django is set up).
EMBEDDINGS_QUEUE = "sluice.embeddings"


def embeddings_worker_argv(
    *, concurrency: int = 2, hostname: str | None = None, loglevel: str = "WARNING"
) -> list[str]:
    """The worker of the embeddings queue (knowledge-base ingestion, query embeddings). Run it
    with SLUICE_WORKER_ROLE=embeddings, so that it loads the sentence model, not the LLM."""
    return [
        sys.executable, "-m", "celery", "-A", "config", "worker",
        "-P", "threads", "-c", str(concurrency), "--prefetch-multiplier", "1",
        "-Q", EMBEDDINGS_QUEUE, "-n", hostname or "embeddings@%h",
        "--without-gossip", "--without-mingle", "-l", loglevel,
    ]  # fmt: skip


def default_concurrency(max_batch_size: int) -> int:
    return max_batch_size + max(2, max_batch_size // 4)


def worker_process(
    env: dict[str, str],
    *,
    model: str,
    name: str,
    log_dir: Path,
    concurrency: int = 0,
    max_batch_size: int = 8,
) -> ServerProcess:
    """A model worker, started the way `manage.py serve_model` starts one."""
    argv = worker_argv(
        model=model, concurrency=concurrency or default_concurrency(max_batch_size), hostname=f"{name}@%h"
    )
    return ServerProcess(name, argv, env, log_dir)


def embeddings_worker_process(env: dict[str, str], *, name: str, log_dir: Path) -> ServerProcess:
    return ServerProcess(
        name,
        embeddings_worker_argv(hostname=f"{name}@%h"),
        {**env, "SLUICE_WORKER_ROLE": "embeddings", "SLUICE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"},
        log_dir,
    )


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_ready(base_url: str, processes: list[ServerProcess], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for proc in processes:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{base_url}/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in processes)
    raise TimeoutError(f"{base_url} not ready after {timeout}s ({last}):\n{logs}")


@contextlib.contextmanager
def running(*processes: ServerProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in processes:
            proc.stop()
