"""/metrics: request latencies from the web process, engine series summed over the fleet."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e


def scrape(live: Live) -> dict[str, float]:
    text = httpx.get(f"{live.base_url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == TEST_MODEL_NAME:
                key = sample.name
                if "status" in sample.labels:
                    key += f"{{{sample.labels['status']}}}"
                if "le" in sample.labels:
                    key += f"[{sample.labels['le']}]"
                values[key] = values.get(key, 0.0) + sample.value
    return values


def test_metrics_cover_the_request_path(live: Live, api_user: ApiUser) -> None:
    before = scrape(live)
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0)
    stream = client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=12, stream=True, extra_body={"ignore_eos": True}
    )
    streamed = sum(1 for chunk in stream if chunk.choices and chunk.choices[0].text)
    client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=12, extra_body={"ignore_eos": True}
    )

    def grew(name: str, by: float) -> bool:
        return scrape(live).get(name, 0.0) - before.get(name, 0.0) >= by

    # Workers (tokens, outcomes) and the web (client-side latencies) each add their series to
    # Redis every second: wait for both.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        grew("sluice_generation_tokens_total", 24)
        and grew("sluice_requests_total{succeeded}", 2)
        and grew("sluice_time_to_first_token_seconds_count", 2)
        and grew("sluice_e2e_request_latency_seconds_count", 2)
    ):
        time.sleep(0.25)
    after = scrape(live)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("sluice_generation_tokens_total") >= 24
    assert delta("sluice_prompt_tokens_total") > 0
    assert delta("sluice_requests_total{succeeded}") >= 2
    assert delta("sluice_batch_size_count") >= 20  # one observation per decode step
    assert delta("sluice_batch_size_bucket[+Inf]") == delta("sluice_batch_size_count")
    assert delta("sluice_queue_time_seconds_count") >= 2
    assert delta("sluice_time_to_first_token_seconds_count") >= 2  # streaming and not
    assert delta("sluice_e2e_request_latency_seconds_count") >= 2
    assert delta("sluice_inter_token_latency_seconds_count") >= streamed - 1 > 0
    assert "sluice_jobs_in_queue" in after and "sluice_engine_running_sequences" in after
