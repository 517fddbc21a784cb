"""`make run` (python -m config.run) from a fresh var directory: embedded Postgres and
Valkey, migrations, admin + demo key, web + worker, ready for `curl`, clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from config.env import BASE_DIR
from tests.support.servers import free_port

pytestmark = pytest.mark.e2e


def test_run_serves_curl_and_stops_cleanly(demo_model_dir: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    shutil.copytree(demo_model_dir, var / "models" / "sluice-demo")  # as if built on an earlier run
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        {
            "SLUICE_VAR_DIR": str(var),
            "SLUICE_PORT": str(port),
            "SLUICE_TORCH_THREADS": "1",
            "SLUICE_MAX_BATCH_SIZE": "4",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env = {k: v for k, v in env.items() if not k.startswith("SLUICE_TEST_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "config.run"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Sluice is ready"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(180), "".join(lines[-60:])
        time.sleep(0.5)  # let the banner finish printing
        output = "".join(lines)
        key = next(line.split()[-1] for line in output.splitlines() if line.strip().startswith("API key"))
        admin_line = next(line for line in output.splitlines() if line.strip().startswith("Admin"))
        password = admin_line.split("admin / ")[1].strip()
        assert json.loads((var / "run" / "demo-credentials.json").read_text())["api_key"] == key
        valkey_url = (var / "run" / "services.env").read_text()
        assert "REDIS_URL=redis://127.0.0.1:" in valkey_url and "DATABASE_URL=postgresql://" in valkey_url

        body = json.dumps(
            {
                "model": "sluice-demo",
                "stream": True,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Hi"}],
            }
        )
        curl = subprocess.run(
            ["curl", "-sN", f"http://127.0.0.1:{port}/v1/chat/completions", "-H", f"Authorization: Bearer {key}",
             "-H", "Content-Type: application/json", "-d", body],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        events = [line for line in curl.stdout.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert any('"content":"' in e and '"content":""' not in e for e in events)

        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as browser:
            login = browser.get("/admin/login/")
            assert login.status_code == 200
            token = browser.cookies["csrftoken"]
            response = browser.post(
                "/admin/login/?next=/admin/",
                data={
                    "username": "admin",
                    "password": password,
                    "csrfmiddlewaretoken": token,
                    "next": "/admin/",
                },
                headers={"Referer": f"http://127.0.0.1:{port}/admin/login/"},
            )
            assert response.status_code == 302 and response.headers["location"] == "/admin/"
            assert browser.get("/admin/gateway/apikey/").status_code == 200
            assert browser.get("/dashboard/").status_code == 200
            assert browser.get("/static/admin/css/base.css").status_code == 200  # static files are served
    finally:
        os.killpg(proc.pid, signal.SIGTERM) if proc.poll() is None else None
        code = proc.wait(60)
    output = "".join(lines)
    assert code == 0, output[-3000:]
    assert "Sluice: stopped" in output
    assert not (var / "run" / "services.env").exists()
    assert not (var / "pg" / "postmaster.pid").exists()  # embedded Postgres stopped
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
