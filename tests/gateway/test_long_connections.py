"""Connections held for minutes stay open: a WebSocket streaming for 60 s and then idle for
30 s, and, at the same time, an SSE stream following a job that waits in its queue for the
whole 90 s (keepalive comments only) and then ends when it is cancelled.

Before the channel layer's socket timeout was fixed, every WebSocket dropped ~5 s after it
opened (a redis TimeoutError inside channels' receive loop).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from config.processes import wait_until
from inference.models import Job, JobStatus, ModelVersion
from tests.conftest import ApiUser, Live

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STREAMING_S = 60.0
IDLE_S = 30.0
UNSERVED = "nobody-serves-this"


@pytest.fixture
def unserved_version(live: Live, demo_model_dir: Path, transactional_db: None) -> Iterator[ModelVersion]:
    """A version no worker serves: its jobs wait in their queue."""
    version = ModelVersion.objects.create(
        served_name=UNSERVED, label="v1", path=str(demo_model_dir), status="stable"
    )
    yield version
    ModelVersion.objects.filter(pk=version.pk).delete()


def websocket_session(live: Live, user: ApiUser, report: dict[str, Any]) -> None:
    with connect(f"{live.ws_url}/ws/v1/jobs/", additional_headers=user.headers, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        opened = time.monotonic()
        jobs = tokens = 0
        while time.monotonic() - opened < STREAMING_S:
            ws.send(json.dumps({"type": "request", "prompt": "Once", "max_tokens": 200, "ignore_eos": True}))
            while True:
                message = json.loads(ws.recv(timeout=60))
                if message["type"] == "token":
                    tokens += len(message["token_ids"])
                elif message["type"] == "end":
                    assert message["status"] == "succeeded", message
                    jobs += 1
                    break
                else:
                    assert message["type"] == "job", message
        streamed = time.monotonic() - opened
        time.sleep(IDLE_S)  # nothing sent either way (the transport's own pings aside)
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "pong"}
        ws.send(json.dumps({"type": "request", "prompt": "After the pause", "max_tokens": 8}))
        while json.loads(ws.recv(timeout=60))["type"] != "end":
            pass
        report.update(jobs=jobs, tokens=tokens, streamed_s=streamed, open_s=time.monotonic() - opened)


def test_a_websocket_and_an_sse_stream_stay_open_for_minutes(
    live: Live, api_user: ApiUser, unserved_version: ModelVersion
) -> None:
    wait_until(
        lambda: UNSERVED in httpx.get(f"{live.base_url}/v1/models", headers=api_user.headers).text,
        timeout=30,
        interval=0.2,
        what="the web server to see the new version",
    )
    waiting = httpx.post(
        f"{live.base_url}/api/v1/jobs",
        json={"model": UNSERVED, "prompt": "x", "max_tokens": 4},
        headers=api_user.headers,
        timeout=30,
    ).json()
    report: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            websocket_session(live, api_user, report)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    socket = threading.Thread(target=run)
    socket.start()
    keepalives = 0
    started = time.monotonic()
    events: list[str] = []
    with httpx.stream(
        "GET",
        f"{live.base_url}/api/v1/jobs/{waiting['id']}/events",
        headers={**api_user.headers, "Accept": "text/event-stream"},  # what EventSource sends
        timeout=httpx.Timeout(30, read=60),
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line == ": keepalive":
                keepalives += 1
                if time.monotonic() - started > STREAMING_S + IDLE_S:
                    httpx.post(
                        f"{live.base_url}/api/v1/jobs/{waiting['id']}/cancel", headers=api_user.headers
                    )
            elif line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                if events[-1] == "end":
                    break
    held = time.monotonic() - started
    socket.join(timeout=STREAMING_S + IDLE_S + 120)
    assert not errors, errors[0]
    assert report["open_s"] >= STREAMING_S + IDLE_S and report["jobs"] >= 2
    assert held >= STREAMING_S + IDLE_S and keepalives >= 10
    assert events == ["queued", "end"]
    assert Job.objects.get(id=waiting["id"]).status == JobStatus.CANCELLED
