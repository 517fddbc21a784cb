"""Fleet metrics after a mix of outcomes: succeeded, failed (a version that cannot load),
cancelled and rejected requests, each counted under its model, version, status and reason on
/metrics and in the console's series (inference/observability/timeseries.py), with version labels on every
latency histogram, admission wait, rate-limit decisions by policy, cache hits and misses,
prefill and decode tokens, and the workers' up, heartbeat and KV gauges."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from config import env
from config.processes import wait_until
from gateway.models import RateLimitPolicy, UserRateLimit
from inference.backends import native
from inference.core.redis import get_redis
from inference.observability.timeseries import read
from tests.conftest import ApiUser, Live
from tests.support.metrics import Samples, parse, value
from tests.support.metrics import scrape as scrape_url
from tests.support.versions import NAME, REMOTE, broken_model_dir, complete, create, loaded

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def scrape(live: Live) -> Samples:
    return scrape_url(live.base_url)


def test_every_counter_and_label_after_a_mix_of_outcomes(
    live: Live,
    clean_versions: None,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
    tmp_path: Path,
) -> None:
    good_label, bad_label = f"good-{uuid.uuid4().hex[:6]}", f"bad-{uuid.uuid4().hex[:6]}"
    good = create(good_label, demo_model_dir)
    bad = create(bad_label, broken_model_dir(tmp_path, demo_model_dir), name=REMOTE)
    loaded(good)
    loaded(bad, ok=False)
    before = scrape(live)
    user = make_api_user()

    # 3 succeeded, streamed (TTFT, ITL, e2e); one deterministic request twice: a cache miss, then a hit.
    gaps = 0  # inter-token latencies: one per chunk after a stream's first (a busy server may
    # send two tokens in one chunk, so they are counted as the client received them)
    for _ in range(3):
        with httpx.stream(
            "POST",
            f"{live.base_url}/v1/completions",
            json={"model": NAME, "prompt": "The river", "max_tokens": 6, "stream": True, "ignore_eos": True},
            headers=user.headers,
            timeout=60,
        ) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
            assert "data: [DONE]" in lines
            chunks = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
            gaps += sum(1 for chunk in chunks if chunk["choices"] and chunk["choices"][0]["text"]) - 1
    for _ in range(2):
        assert (
            complete(live, user, prompt="Cache me", temperature=0, max_tokens=4, ignore_eos=True).status_code
            == 200
        )
    # 2 failed: the broken version cannot load (fails fast, reason load_failed).
    failed = [complete(live, user, model=REMOTE) for _ in range(2)]
    assert [r.status_code for r in failed] == [500, 500]
    # 1 cancelled while generating.
    job = httpx.post(
        f"{live.base_url}/api/v1/jobs",
        json={"model": NAME, "prompt": "Once", "max_tokens": 400, "ignore_eos": True},
        headers=user.headers,
    ).json()
    wait_until(
        lambda: (
            httpx.get(f"{live.base_url}/api/v1/jobs/{job['id']}", headers=user.headers).json()["status"]
            == "running"
        ),
        timeout=30,
        what="the job to start",
    )
    assert (
        httpx.post(f"{live.base_url}/api/v1/jobs/{job['id']}/cancel", headers=user.headers).status_code == 202
    )
    wait_until(
        lambda: (
            httpx.get(f"{live.base_url}/api/v1/jobs/{job['id']}", headers=user.headers).json()["status"]
            == "cancelled"
        ),
        timeout=30,
        what="the cancellation",
    )
    # 1 rejected: a policy of one request a minute, no waiting.
    policy_name = f"tiny-{uuid.uuid4().hex[:6]}"
    tiny = RateLimitPolicy.objects.create(name=policy_name, requests_per_minute=1, max_queue_wait_s=0)
    limited = make_api_user()
    UserRateLimit.objects.create(user=limited.user, policy=tiny)
    assert complete(live, limited, ignore_eos=True).status_code == 200
    assert complete(live, limited, ignore_eos=True).status_code == 429

    ok = {"model": NAME, "version": good_label}
    gone = {"model": REMOTE, "version": bad_label}

    def settled() -> bool:
        now = scrape(live)
        return (
            value(now, "sluice_requests_total", status="succeeded", **ok)
            - value(before, "sluice_requests_total", status="succeeded", **ok)
            >= 6
            and value(now, "sluice_requests_total", status="cancelled", **ok) >= 1
            and value(now, "sluice_requests_total", status="rejected", **ok) >= 1
            and value(now, "sluice_requests_total", status="failed", **gone) >= 2
            and value(now, "sluice_generation_tokens_total", **ok)
            - value(before, "sluice_generation_tokens_total", **ok)
            >= 3 * 6 + 4 + 6
            and value(now, "sluice_inter_token_latency_seconds_count", **ok)
            - value(before, "sluice_inter_token_latency_seconds_count", **ok)
            >= gaps
        )

    def in_series() -> bool:  # the console's series have a flusher of their own
        outcomes = read(get_redis(), "5m").groups("req")
        return (
            outcomes.get((NAME, good_label, "succeeded", "length"), 0) >= 6
            and outcomes.get((NAME, good_label, "rejected", "rate_limited"), 0) >= 1
            and outcomes.get((NAME, good_label, "cancelled", "cancelled"), 0) >= 1
            and outcomes.get((REMOTE, bad_label, "failed", "load_failed"), 0) >= 2
        )

    wait_until(
        lambda: settled() and in_series(), timeout=30, what="the fleet counters (flushed every second)"
    )
    after = scrape(live)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Outcomes: 3 streams + 2 deterministic + 1 for the limited user = 6 succeeded on the good
    # version (finish reason length); 2 failed with load_failed; 1 cancelled; 1 rejected.
    assert delta("sluice_requests_total", status="succeeded", reason="length", **ok) == 6
    assert delta("sluice_requests_total", status="failed", reason="load_failed", **gone) == 2
    assert delta("sluice_requests_total", status="cancelled", reason="cancelled", **ok) == 1
    assert delta("sluice_requests_total", status="rejected", reason="rate_limited", **ok) == 1
    assert delta("sluice_requests_total", status="failed", **ok) == 0
    # Latency histograms carry the version: every finished request of the good version has an
    # end-to-end and a first-token observation; the three streams have inter-token gaps.
    assert delta("sluice_e2e_request_latency_seconds_count", **ok) >= 6
    assert delta("sluice_time_to_first_token_seconds_count", **ok) >= 6
    assert gaps >= 3 and delta("sluice_inter_token_latency_seconds_count", **ok) >= gaps
    assert delta("sluice_e2e_request_latency_seconds_bucket", le="+Inf", **ok) == delta(
        "sluice_e2e_request_latency_seconds_count", **ok
    )
    # Admission: the limited user's policy admitted one and refused one; every admitted
    # request observed its wait.
    assert delta("sluice_ratelimit_decisions_total", result="admitted", policy=policy_name) == 1
    assert delta("sluice_ratelimit_decisions_total", result="rate_limited", policy=policy_name) == 1
    assert delta("sluice_admission_wait_seconds_count", model=NAME, policy=policy_name) == 1
    # The result cache: a miss, then a hit (and the other deterministic-free requests: none).
    assert delta("sluice_cache_requests_total", result="miss", **ok) == 1
    assert delta("sluice_cache_requests_total", result="hit", **ok) == 1
    # Engine series: prefill and decode tokens of the good version (the cache hit generated nothing).
    assert delta("sluice_prompt_tokens_total", **ok) > 0
    assert delta("sluice_generation_tokens_total", **ok) >= 3 * 6 + 4 + 6
    assert delta("sluice_generation_tokens_total", **gone) == 0
    # Workers: up, beating, and the good version's KV and slot usage reported.
    workers = {dict(ls)["worker"] for (n, ls), v in after.items() if n == "sluice_worker_up" and v == 1}
    assert any(name.startswith("versions-worker") for name in workers)
    ages = [v for (n, ls), v in after.items() if n == "sluice_worker_heartbeat_age_seconds"]
    assert ages and min(ages) < 15
    assert any(n == "sluice_kv_cache_usage_ratio" and dict(ls)["version"] == good_label for (n, ls) in after)
    assert any(
        n == "sluice_batch_slots_usage_ratio" and dict(ls)["version"] == good_label for (n, ls) in after
    )
    # The attention the good version runs: the native kernel where this checkout built it (the
    # suite's workers run with SLUICE_NATIVE_ATTENTION=on and load the build this process
    # finds), else torch's GEMMs.
    kernels = {
        dict(ls)["kernel"] for (n, ls), v in after.items() if n == "sluice_attention_kernel" and v == 1
        and dict(ls)["version"] == good_label
    }  # fmt: skip
    assert kernels == {native.kernel(env.native_dir()).name}

    # The console's series saw the same outcomes (the last 5 minutes).
    window = read(get_redis(), "5m")
    outcomes = window.groups("req")
    assert outcomes.get((NAME, good_label, "succeeded", "length"), 0) == 6
    assert outcomes.get((REMOTE, bad_label, "failed", "load_failed"), 0) == 2
    assert outcomes.get((NAME, good_label, "cancelled", "cancelled"), 0) == 1
    assert outcomes.get((NAME, good_label, "rejected", "rate_limited"), 0) == 1
    assert window.histogram("e2e", lambda parts: parts[1:3] == [NAME, good_label]).count >= 6
    decisions = window.groups("rl")
    assert decisions[(policy_name, "admitted")] == 1 and decisions[(policy_name, "rate_limited")] == 1


def test_a_workers_own_metrics_endpoint(
    live: Live,
    clean_versions: None,
    demo_model_dir: Path,
    tmp_path: Path,
    make_api_user: Callable[..., ApiUser],
) -> None:
    from tests.support import versions

    good = create(f"own-{uuid.uuid4().hex[:6]}", demo_model_dir)
    bad = create(f"own-bad-{uuid.uuid4().hex[:6]}", broken_model_dir(tmp_path, demo_model_dir), name=REMOTE)
    loaded(good)
    loaded(bad, ok=False)
    samples = parse(httpx.get(f"http://127.0.0.1:{versions.metrics_port}/metrics", timeout=10).text)
    workers = {dict(ls)["worker"] for n, ls in samples if n == "sluice_worker_version_loaded"}
    assert (
        value(samples, "process_resident_memory_bytes") > 0
        and value(samples, "process_cpu_seconds_total") > 0
    )
    assert value(samples, "sluice_worker_version_loaded", model=NAME, version=good.label) == 1
    assert value(samples, "sluice_worker_version_loaded", model=REMOTE, version=bad.label) == 0
    assert value(samples, "sluice_worker_kv_cache_positions", version=good.label, kind="capacity") > 0
    assert value(samples, "sluice_worker_sequences", version=good.label, state="running") == 0
    assert len(workers) == 1 and workers.pop().startswith("versions-worker")
    # The fleet series are the web's to serve: none here, so nothing is counted twice.
    assert not any(n.startswith("sluice_requests") for n, _ in samples)

    # The prefix cache: the same long prompt twice (sampled, so the result cache stays out of
    # it): the second prefills only what the first left uncached.
    user = make_api_user()
    prompt = " ".join(f"stone {i} in the river bed" for i in range(12))
    for _ in range(2):
        assert complete(live, user, prompt=prompt, max_tokens=2).status_code == 200
    own = parse(httpx.get(f"http://127.0.0.1:{versions.metrics_port}/metrics", timeout=10).text)
    hit = value(own, "sluice_prefix_cache_hit_tokens_total", version=good.label)
    lookup = value(own, "sluice_prefix_cache_lookup_tokens_total", version=good.label)
    assert hit >= 32 and lookup > hit
    assert value(own, "sluice_prefix_cache_hit_ratio", version=good.label) == pytest.approx(hit / lookup)
    assert value(own, "sluice_prefix_cache_blocks", version=good.label, kind="capacity") > 0
    assert value(own, "sluice_prefix_cache_blocks", version=good.label, kind="used") > 0
    # The web's fleet view reads the same counters from the heartbeats.
    wait_until(
        lambda: value(scrape(live), "sluice_prefix_cache_hit_tokens_total", version=good.label) >= hit,
        timeout=30,
        what="the prefix-cache counters in a heartbeat",
    )
