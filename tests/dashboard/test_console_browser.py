"""The operations console in a real browser (Debian's chromium through chromium-driver and
selenium; nothing is downloaded): log in, open the dashboard while the live server serves
traffic, and see the charts receive data points and update without a reload. A screenshot
is saved under the test's tmp dir (and, with SLUICE_CONSOLE_SCREENSHOT set, there too: the
README's picture is made this way). With SLUICE_CONSOLE_SCREENSHOTS naming a folder, every
console page the test walks is saved there."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User

from config.processes import wait_until
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live
from tests.support.tools import require_tools

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium, chromedriver = require_tools("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # The flags a closed network needs (no background connections, no update checks).
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1600,2200", f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for errors
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def charts_without_points(driver: Any) -> list[str]:
    """The dashboard's charts that hold no number yet (a gap is None, not a point)."""
    return list(
        driver.execute_script(
            """
            return [...document.querySelectorAll("canvas[data-chart]")].filter((canvas) => {
                const chart = Chart.getChart(canvas);
                return !chart || !chart.data.datasets.some((d) => d.data.some((v) => typeof v === "number"));
            }).map((canvas) => canvas.dataset.chart);
            """
        )
    )


def chart_points(driver: Any, chart: str) -> float:
    """The sum of every data point of a chart, as Chart.js holds it now."""
    return float(
        driver.execute_script(
            """
            const chart = Chart.getChart(document.getElementById(arguments[0]));
            if (!chart) return -1;
            return chart.data.datasets.reduce(
                (sum, d) => sum + d.data.reduce((s, v) => s + (typeof v === "number" ? v : 0), 0), 0);
            """,
            f"chart-{chart}",
        )
    )


def test_console_charts_update_live_under_traffic(
    live: Live, make_api_user: Callable[..., ApiUser], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    User.objects.create_superuser("ops", "ops@example.com", "console-pass-12345")
    user = make_api_user()
    stop = threading.Event()
    sent = {"n": 0}

    def traffic(stream: bool) -> None:
        with httpx.Client(base_url=live.base_url, headers=user.headers, timeout=60) as client:
            while not stop.is_set():
                body: dict[str, Any] = {
                    "model": TEST_MODEL_NAME, "prompt": "The river", "max_tokens": 8, "ignore_eos": True,
                }  # fmt: skip
                if not stream and sent["n"] % 2:
                    body["seed"] = 7  # the same seeded request: result-cache hits for their chart
                with client.stream("POST", "/v1/completions", json={**body, "stream": stream}) as response:
                    assert response.status_code == 200
                    response.read()
                sent["n"] += 1

    # Two clients at once, one streaming (inter-token latency), one not.
    threads = [threading.Thread(target=traffic, args=(stream,), daemon=True) for stream in (True, False)]
    for thread in threads:
        thread.start()
    try:
        browser.get(f"{live.base_url}/admin/login/?next=/dashboard/")
        browser.find_element(By.NAME, "username").send_keys("ops")
        browser.find_element(By.NAME, "password").send_keys("console-pass-12345")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        wait_until(lambda: "/dashboard/" in browser.current_url, timeout=30, what="the dashboard after login")
        wait_until(
            lambda: browser.execute_script(
                "return !!(window.Chart && Chart.getChart(document.getElementById('chart-requests')))"
            ),
            timeout=30,
            what="the charts to be drawn",
        )
        # A marker on the page: it survives only if the page is never reloaded.
        browser.execute_script("window.__sluiceMarker = 42;")
        first = int(browser.execute_script("return window.sluiceConsole.updates"))
        wait_until(lambda: sent["n"] >= 3, timeout=60, what="some traffic")
        wait_until(
            lambda: (
                int(browser.execute_script("return window.sluiceConsole.updates")) >= first + 3
                and chart_points(browser, "requests") > 0
                and chart_points(browser, "tokens") > 0
                and chart_points(browser, "e2e") > 0
                and chart_points(browser, "itl") > 0
            ),
            timeout=60,
            what="live updates with data points",
        )
        seen = chart_points(browser, "tokens")
        wait_until(
            lambda: chart_points(browser, "tokens") != seen, timeout=30, what="the tokens chart to change"
        )
        assert browser.execute_script("return window.__sluiceMarker") == 42  # updated in place
        labels = browser.execute_script(
            "return Chart.getChart(document.getElementById('chart-requests')).data.labels.length"
        )
        assert labels == 29  # 5 minutes of 10 s buckets, the one still filling left out
        # Every chart has data (latency, queue, sequences and KV from the worker, error and
        # cache-hit rates), and its newest point is a whole bucket.
        wait_until(lambda: charts_without_points(browser) == [], timeout=60, what="every chart to have data")
        # The tables are live too: the worker that serves the traffic, and its version.
        workers = browser.find_element(By.ID, "workers-table").text
        assert "live-worker" in workers and "ok" in workers
        versions = browser.find_element(By.ID, "versions-table").text
        assert f"{TEST_MODEL_NAME}@default" in versions
        shot = tmp_path / "console.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("SLUICE_CONSOLE_SCREENSHOT"):
            shutil.copy(shot, os.environ["SLUICE_CONSOLE_SCREENSHOT"])
        # The admin links to it: the home page's card and the sidebar.
        browser.get(f"{live.base_url}/admin/")
        links = [a.get_attribute("href") or "" for a in browser.find_elements(By.CSS_SELECTOR, "a")]
        assert sum(link.endswith("/dashboard/") for link in links) >= 2
        # Usage and cost: the daily chart draws (its options used to break their attribute,
        # "Uncaught SyntaxError ... JSON"), with the traffic's tokens, and nothing errs.
        browser.get_log("browser")  # what came before
        browser.get(f"{live.base_url}/admin/inference/usagedaily/")
        drawn = """
            const canvas = document.querySelector("#usage-chart canvas");
            const chart = canvas && Chart.getChart(canvas);
            if (!chart) return -1;
            return chart.data.datasets.reduce(
                (sum, d) => sum + d.data.reduce((s, v) => s + (typeof v === "number" ? v : 0), 0), 0);
        """
        wait_until(lambda: float(browser.execute_script(drawn)) > 0, timeout=30, what="the usage chart")
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], errors
        # Every other page of the console renders with no console error: each model's list,
        # a version's and a job's page, the API docs, and the landing page.
        from django.contrib import admin

        from inference.models import Job, ModelVersion

        version = ModelVersion.objects.create(served_name="browsed", label="v1", path="/nowhere")
        pages = [f"/admin/{m._meta.app_label}/{m._meta.model_name}/" for m in admin.site._registry]
        pages += [
            f"/admin/inference/modelversion/{version.pk}/change/",
            f"/admin/inference/job/{Job.objects.order_by('-queued_at').values_list('id', flat=True)[0]}/change/",
            "/dashboard/?window=1h", "/dashboard/?window=24h", "/api/docs/", "/",
        ]  # fmt: skip
        for page in pages:
            browser.get(f"{live.base_url}{page}")
            wait_until(
                lambda: browser.execute_script("return document.readyState") == "complete",
                timeout=30,
                what=f"{page} to load",
            )
            assert "Server Error" not in browser.title and "Page not found" not in browser.title, page
            errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
            assert errors == [], (page, errors)
            if os.environ.get("SLUICE_CONSOLE_SCREENSHOTS"):  # a folder: every page, for review
                name = page.strip("/").replace("/", "_").replace("?", "_") or "landing"
                browser.save_screenshot(str(Path(os.environ["SLUICE_CONSOLE_SCREENSHOTS"]) / f"{name}.png"))
        assert "Sluice" in browser.find_element(By.TAG_NAME, "h1").text  # the landing page
        # Logged out, the login page straight (no ?next=) lands in the admin.
        browser.delete_all_cookies()
        browser.get(f"{live.base_url}/admin/login/")
        browser.find_element(By.NAME, "username").send_keys("ops")
        browser.find_element(By.NAME, "password").send_keys("console-pass-12345")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        wait_until(
            lambda: browser.current_url.rstrip("/").endswith("/admin"),
            timeout=30,
            what="the admin after login",
        )
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
