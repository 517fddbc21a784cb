"""`make run`'s supervision: a crashing child is restarted with backoff, forever, reported as a
crash loop, and the others keep running."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pytest
from django.conf import settings

from config.processes import wait_until
from config.run import SUPERVISOR_KEY, Child, Supervisor, backoff_s
from inference.core.redis import get_redis


def test_backoff_doubles_up_to_a_minute(monkeypatch: Any) -> None:
    monkeypatch.delenv("SLUICE_RESTART_BACKOFF_S", raising=False)
    assert [backoff_s(n) for n in (1, 2, 3, 4, 8, 20)] == [1, 2, 4, 8, 60, 60]


def test_a_crash_loop_is_restarted_forever_and_reported(monkeypatch: Any) -> None:
    monkeypatch.setenv("SLUICE_RESTART_BACKOFF_S", "0.1")
    supervisor = Supervisor()
    supervisor.redis_url = settings.REDIS_URL
    crasher = Child("worker-broken", [sys.executable, "-c", "raise SystemExit(3)"], {})
    healthy = Child("web", [sys.executable, "-c", "import time; time.sleep(120)"], {})
    supervisor.children = [crasher, healthy]
    for child in supervisor.children:
        child.start()
    thread = threading.Thread(target=supervisor.watch, daemon=True)
    thread.start()
    try:
        # Past the crash-loop threshold: it is still restarted (the old supervisor gave up and
        # stopped everything after 6 crashes in a minute).
        wait_until(lambda: len(crasher.restarts.crashes) >= 7, timeout=60, what="repeated crashes")
        assert thread.is_alive() and not supervisor.stopping
        assert healthy.alive() and not healthy.restarts.crashes
        assert crasher.restarts.looping and crasher.restarts.last_exit == "exit code 3"
        report = json.loads(get_redis().get(SUPERVISOR_KEY) or "{}")
        assert report["processes"]["worker-broken"]["crash_loop"] is True
        assert "web" not in report["processes"]
        # The delay grows with each crash in the window.
        assert crasher.restarts.next_start is None or crasher.restarts.next_start - time.monotonic() < 60
    finally:
        supervisor.stopping = True
        thread.join(10)
        for child in supervisor.children:
            child.stop(timeout=5)
        get_redis().delete(SUPERVISOR_KEY)


@pytest.fixture(autouse=True)
def _no_leftover_report() -> None:
    get_redis().delete(SUPERVISOR_KEY)
