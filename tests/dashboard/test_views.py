"""The console's pages for staff only, its snapshot for each window (every chart, one label per
bucket), and a store outage shown as a banner rather than an error page. The live updates in a
browser are tests/dashboard/test_console_browser.py."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from dashboard.views import CHARTS

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw-12345-long"))
    return client


def test_only_staff_see_the_console(client: Client) -> None:
    for path in ("/dashboard/", "/dashboard/snapshot", "/dashboard/stream"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path
    client.force_login(User.objects.create_user("someone", password="pw-12345-long"))
    assert client.get("/dashboard/snapshot").status_code == 302


# The 5 minute window's charts end at the last whole 10 s bucket (the one still filling dipped at
# every chart's right edge); the 1 and 24 hour windows draw theirs, marked "(so far)".
@pytest.mark.parametrize(("window", "buckets"), [("5m", 29), ("1h", 60), ("24h", 144), ("bogus", 29)])
def test_snapshot_of_each_window(staff: Client, window: str, buckets: int) -> None:
    response = staff.get("/dashboard/snapshot", {"window": window})
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    snapshot = response.json()
    assert snapshot["window"] == (window if window != "bogus" else "5m")
    assert set(snapshot["charts"]) == {key for key, _, _ in CHARTS}
    for key, chart in snapshot["charts"].items():
        assert len(chart["labels"]) == buckets, key
        assert chart["labels"][-1].endswith("(so far)") == (window in ("1h", "24h")), key
        for dataset in chart["datasets"]:
            assert len(dataset["data"]) == buckets, (key, dataset["label"])
    for part in ("versions", "workers", "admission", "top_users", "alerts", "totals"):
        assert part in snapshot


def test_the_page_has_every_chart_and_the_window_picker(staff: Client) -> None:
    page = staff.get("/dashboard/", {"window": "1h"})
    assert page.status_code == 200
    html = page.content.decode()
    for key, title, _ in CHARTS:
        assert f'id="chart-{key}"' in html and title in html
    for window in ("5m", "1h", "24h"):
        assert f"window={window}" in html
    assert "dashboard/live.js" in html and 'id="workers-table"' in html and 'id="versions-table"' in html


def test_redis_down_is_a_banner(staff: Client, settings: object) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]  # nothing listens there
    response = staff.get("/dashboard/snapshot")
    assert response.status_code == 200
    alerts = response.json()["alerts"]
    assert [a["name"] for a in alerts] == ["RedisDown"]
    page = staff.get("/dashboard/")
    assert page.status_code == 200 and b"Redis is unreachable" in page.content
