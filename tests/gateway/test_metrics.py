"""/metrics: request latencies from the web process, engine series summed over the fleet."""

from __future__ import annotations

import openai
import pytest

from config.processes import wait_until
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live
from tests.support.metrics import Samples, has, scrape, value

pytestmark = pytest.mark.e2e


def test_metrics_cover_the_request_path(live: Live, api_user: ApiUser) -> None:
    before = scrape(live.base_url)
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0)
    stream = client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=12, stream=True, extra_body={"ignore_eos": True}
    )
    streamed = sum(1 for chunk in stream if chunk.choices and chunk.choices[0].text)
    client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=12, extra_body={"ignore_eos": True}
    )

    def delta(now: Samples, name: str, **labels: str) -> float:
        return value(now, name, model=TEST_MODEL_NAME, **labels) - value(
            before, name, model=TEST_MODEL_NAME, **labels
        )

    def grown() -> bool:
        now = scrape(live.base_url)
        return (
            delta(now, "sluice_generation_tokens_total") >= 24
            and delta(now, "sluice_requests_total", status="succeeded") >= 2
            and delta(now, "sluice_time_to_first_token_seconds_count") >= 2
            and delta(now, "sluice_e2e_request_latency_seconds_count") >= 2
        )

    # Workers (tokens, outcomes) and the web (client-side latencies) each add their series to
    # Redis every second: wait for both.
    wait_until(grown, timeout=30, interval=0.25, what="the series of both")
    after = scrape(live.base_url)
    assert delta(after, "sluice_generation_tokens_total") >= 24
    assert delta(after, "sluice_prompt_tokens_total") > 0
    assert delta(after, "sluice_requests_total", status="succeeded") >= 2
    assert delta(after, "sluice_batch_size_count") >= 20  # one observation per decode step
    assert delta(after, "sluice_batch_size_bucket", le="+Inf") == delta(after, "sluice_batch_size_count")
    assert delta(after, "sluice_queue_time_seconds_count") >= 2
    assert delta(after, "sluice_time_to_first_token_seconds_count") >= 2  # streaming and not
    assert delta(after, "sluice_e2e_request_latency_seconds_count") >= 2
    assert delta(after, "sluice_inter_token_latency_seconds_count") >= streamed - 1 > 0
    assert has(after, "sluice_jobs_in_queue", model=TEST_MODEL_NAME)
    assert has(after, "sluice_engine_running_sequences", model=TEST_MODEL_NAME)
