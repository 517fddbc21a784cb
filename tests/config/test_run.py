"""`make run` (python -m config.run): embedded Postgres and Valkey from a fresh var directory
(or the servers DATABASE_URL/REDIS_URL name), migrations, admin + demo key, web + worker,
ready for `curl`, clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings

from config.env import BASE_DIR
from config.processes import free_port

pytestmark = pytest.mark.e2e


@dataclass
class Run:
    proc: subprocess.Popen[str]
    port: int
    var: Path
    lines: list[str] = field(default_factory=list)
    code: int | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def banner(self, label: str) -> str:
        return next(line.strip() for line in self.output.splitlines() if line.strip().startswith(label))


@contextmanager
def make_run(demo_model_dir: Path, var: Path, **extra_env: str) -> Iterator[Run]:
    shutil.copytree(demo_model_dir, var / "models" / "sluice-demo")  # as if built on an earlier run
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
        and not k.startswith("SLUICE_TEST_")
    }
    env.update(
        SLUICE_VAR_DIR=str(var), SLUICE_PORT=str(port), SLUICE_TORCH_THREADS="1", SLUICE_MAX_BATCH_SIZE="4"
    )
    env.update(extra_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "config.run"], cwd=BASE_DIR, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    run = Run(proc=proc, port=port, var=var)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(180), run.output[-4000:]
        yield run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        run.code = proc.wait(60)
    assert run.code == 0, run.output[-3000:]
    assert "Sluice: stopped" in run.output
    assert not (var / "run" / "services.env").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def curl_chat(run: Run) -> list[str]:
    key = run.banner("API key").split()[-1]
    body = json.dumps(
        {
            "model": "sluice-demo",
            "stream": True,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hi"}],
        }
    )
    curl = subprocess.run(
        ["curl", "-sN", f"http://127.0.0.1:{run.port}/v1/chat/completions", "-H", f"Authorization: Bearer {key}",
         "-H", "Content-Type: application/json", "-d", body],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line for line in curl.stdout.splitlines() if line.startswith("data: ")]


def test_run_with_embedded_servers(demo_model_dir: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    with make_run(demo_model_dir, var) as run:
        services = (var / "run" / "services.env").read_text()
        assert "REDIS_URL=redis://127.0.0.1:" in services and "DATABASE_URL=postgresql://" in services
        key = run.banner("API key").split()[-1]
        assert json.loads((var / "run" / "demo-credentials.json").read_text())["api_key"] == key

        events = curl_chat(run)
        assert events[-1] == "data: [DONE]"
        assert any('"content":"' in e and '"content":""' not in e for e in events)

        # The embeddings worker `make run` starts: a knowledge base is ingested and searched.
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{run.port}", headers=auth, timeout=30) as api:
            kb = api.post("/api/v1/knowledge-bases", json={"name": "notes"}).json()["id"]
            doc = api.post(
                f"/api/v1/knowledge-bases/{kb}/documents",
                json={"name": "a.txt", "text": "Otters hold hands."},
            ).json()["id"]
            deadline = time.monotonic() + 60
            while api.get(f"/api/v1/knowledge-bases/{kb}/documents/{doc}").json()["status"] != "ready":
                assert time.monotonic() < deadline, "the document was not ingested"
                time.sleep(0.2)
            hits = api.post(
                "/api/v1/knowledge-bases/search", json={"query": "otters", "knowledge_base_ids": [kb]}
            ).json()["data"]
            assert hits and hits[0]["text"] == "Otters hold hands."

        password = run.banner("Admin").split("admin / ")[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{run.port}") as browser:
            assert browser.get("/admin/login/").status_code == 200
            response = browser.post(
                "/admin/login/?next=/admin/",
                data={
                    "username": "admin",
                    "password": password,
                    "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                },
                headers={"Referer": f"http://127.0.0.1:{run.port}/admin/login/"},
            )
            assert response.status_code == 302 and response.headers["location"] == "/admin/"
            assert browser.get("/admin/gateway/apikey/").status_code == 200
            assert browser.get("/dashboard/").status_code == 200
            # Production-shaped: static files collected, under hashed names, cached for good and
            # compressed; DEBUG off, so an unknown page is Django's plain 404, not its URL list.
            page = browser.get("/admin/").text
            css = re.search(r'href="(/static/[^"]+\.[0-9a-f]{12}\.css)"', page)
            assert css, page[:3000]
            static = browser.get(css.group(1), headers={"Accept-Encoding": "gzip"})
            assert static.status_code == 200 and static.headers["content-encoding"] == "gzip"
            assert "immutable" in static.headers["cache-control"]
            assert (var / "static" / "staticfiles.json").exists()
            missing = browser.get("/admin/no-such-page/")
            assert missing.status_code == 404 and "URLconf" not in missing.text
            api_missing = browser.get("/no/such/thing")
            assert api_missing.status_code == 404 and api_missing.json()["error"]
        assert "DEBUG on" not in run.output
        assert (var / "secret_key").stat().st_mode & 0o777 == 0o600  # its own key, private
    assert not (var / "pg" / "postmaster.pid").exists()  # embedded Postgres stopped


def test_run_with_external_servers(demo_model_dir: Path, tmp_path: Path) -> None:
    """DATABASE_URL / REDIS_URL set: no embedded server is started (here the test run's own
    servers play the external ones, in a database and Redis db of their own)."""
    from config.settings.test import TEST_DATABASE_URL

    base, _, _ = TEST_DATABASE_URL.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS sluice_run_external")
        conn.execute("CREATE DATABASE sluice_run_external")
    redis_url = settings.REDIS_URL.rsplit("/", 1)[0] + "/7"
    var = tmp_path / "var"
    with make_run(
        demo_model_dir, var, DATABASE_URL=f"{base}/sluice_run_external", REDIS_URL=redis_url
    ) as run:
        assert curl_chat(run)[-1] == "data: [DONE]"
        assert (var / "run" / "services.env").read_text() == ""  # nothing embedded
        assert not (var / "pg").exists() and not (var / "valkey").exists()
        assert "embedded" not in run.output
    with psycopg.connect(f"{base}/sluice_run_external") as conn:
        assert conn.execute("SELECT count(*) FROM inference_job").fetchone() == (1,)
