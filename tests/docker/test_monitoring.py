"""The shipped monitoring: Prometheus's config and alert rules pass ``promtool check``, the
rules' unit tests (docker/prometheus/alerts_test.yml) pass ``promtool test rules``, the
Grafana dashboard is provisioned against the provisioned data source, and every metric the
rules and panels query is one the live server's /metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from config.env import BASE_DIR
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live
from tests.support.tools import require_tools

PROMETHEUS = BASE_DIR / "docker" / "prometheus"
GRAFANA = BASE_DIR / "docker" / "grafana"
METRIC = re.compile(r"\b(sluice_[a-z_]+)\b")


def promtool(*args: str, cwd: Path) -> str:
    [path] = require_tools("promtool")
    result = subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_config_and_rules_check_and_the_rule_tests_pass(tmp_path: Path) -> None:
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, copy)
    token = tmp_path / "token"
    token.write_text("a-token")
    config = copy / "prometheus.yml"
    config.write_text(config.read_text().replace("/run/secrets/sluice_metrics_token", str(token)))
    promtool("check", "config", str(config), cwd=copy)
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", "alerts.yml", cwd=copy)
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml", cwd=copy)
    tested = {
        case["alertname"]
        for test in yaml.safe_load((copy / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == set(alert_names())  # every rule has a unit test


def alert_names() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def queried_metrics() -> dict[str, set[str]]:
    """Metric names per file: the rules' and the Grafana panels' expressions."""
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    rules = {name for group in groups for rule in group["rules"] for name in METRIC.findall(rule["expr"])}
    dashboard = json.loads((GRAFANA / "dashboards" / "sluice.json").read_text())
    panels = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }
    return {"alerts.yml": rules, "sluice.json": panels}


def test_grafana_dashboard_uses_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((GRAFANA / "dashboards" / "sluice.json").read_text())
    assert dashboard["uid"] and len(dashboard["panels"]) >= 12
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sluice.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.e2e
def test_every_queried_metric_is_exported(live: Live, make_api_user: Callable[..., ApiUser]) -> None:
    user = make_api_user()
    response = httpx.post(
        f"{live.base_url}/v1/completions",
        json={"model": TEST_MODEL_NAME, "prompt": "The river", "max_tokens": 4, "stream": True},
        headers=user.headers,
        timeout=60,
    )
    assert response.status_code == 200
    # Every name a query may use for a family, by its type (a family with no samples yet, such
    # as version events before the first one, still has its HELP and TYPE lines).
    exported: set[str] = set()
    for family in text_string_to_metric_families(httpx.get(f"{live.base_url}/metrics", timeout=10).text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
        exported.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    for source, names in queried_metrics().items():
        assert names, source
        missing = sorted(name for name in names if name not in exported)
        assert not missing, f"{source} queries metrics /metrics does not export: {missing}"
