"""Usage and cost, end to end: jobs on a priced version through the live server, counted per
day, user, key, model and version in `UsageDaily` as exact sums over the job rows; the same
totals from ``/api/v1/me/usage`` (grouped by day, model and key) and in the admin's CSV
export; and each job's timeline (received -> admitted -> queued -> started -> first token ->
finished) in order, from the jobs API and on its admin page, with the rendered prompt shown
to operators only."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from django.test import Client

from config.processes import wait_until
from inference.models import Job, UsageDaily
from inference.observability.usage import job_cost
from tests.conftest import ApiUser, Live
from tests.support.versions import NAME, complete, create, job_of, loaded

pytestmark = pytest.mark.e2e

PRICE_IN, PRICE_OUT = Decimal("2.500000"), Decimal("10.000000")


def totals(user: User) -> dict[str, int | Decimal | None]:
    return UsageDaily.objects.filter(user=user).aggregate(
        requests=Sum("requests"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cached=Sum("cached_tokens"),
        cost=Sum("cost"),
    )


def test_usage_and_cost_are_exact_sums_over_the_jobs(
    live: Live,
    clean_versions: None,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
    client: Client,
) -> None:
    label = f"priced-{uuid.uuid4().hex[:6]}"
    version = create(label, demo_model_dir, price_input_per_mtok=PRICE_IN, price_output_per_mtok=PRICE_OUT)
    loaded(version)
    user, other = make_api_user(), make_api_user()
    second = httpx.post(
        f"{live.base_url}/api/v1/me/keys", json={"name": "second"}, headers=user.headers, timeout=30
    ).json()
    second_user = ApiUser(user=user.user, key=second["key"])

    responses = [complete(live, user, max_tokens=5, ignore_eos=True) for _ in range(2)]
    responses.append(complete(live, second_user, max_tokens=7, ignore_eos=True))
    # The same deterministic request twice: generated once, then answered from the cache.
    for _ in range(2):
        responses.append(
            complete(live, user, prompt="Count me", temperature=0, max_tokens=4, ignore_eos=True)
        )
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    jobs = [job_of(r) for r in responses]
    assert [j.cache_hit for j in jobs] == [False, False, False, False, True]
    # Counted as each job ends (the worker writes the row just after the answer is out).
    wait_until(lambda: totals(user.user)["requests"] == len(jobs), timeout=30, what="usage of every job")

    jobs = list(Job.objects.filter(pk__in=[j.pk for j in jobs]))
    expected_cost = sum(
        job_cost(
            prompt_tokens=j.prompt_tokens or 0,
            completion_tokens=j.completion_tokens or 0,
            cache_hit=j.cache_hit,
            price_in=PRICE_IN,
            price_out=PRICE_OUT,
        )
        for j in jobs
    )
    prompt = sum(j.prompt_tokens or 0 for j in jobs)
    completion = sum(j.completion_tokens or 0 for j in jobs)
    cached = sum(j.completion_tokens or 0 for j in jobs if j.cache_hit)
    assert prompt > 0 and completion == 5 + 5 + 7 + 4 + 4 and cached == 4
    got = totals(user.user)
    assert (got["prompt"], got["completion"], got["cached"]) == (prompt, completion, cached)
    assert got["cost"] == expected_cost and expected_cost > 0
    assert set(UsageDaily.objects.filter(user=user.user).values_list("model", "version")) == {(NAME, label)}

    # The owner's API: the same totals, any grouping.
    url = f"{live.base_url}/api/v1/me/usage"
    for group_by in ("day", "model", "key"):
        body = httpx.get(url, params={"group_by": group_by}, headers=user.headers, timeout=30).json()
        assert body["total"]["requests"] == 5 and Decimal(body["total"]["cost"]) == expected_cost
        assert body["total"]["total_tokens"] == prompt + completion
        assert sum(row["requests"] for row in body["data"]) == 5
    by_key = httpx.get(url, params={"group_by": "key"}, headers=user.headers).json()["data"]
    assert sorted((row["api_key"]["name"], row["requests"]) for row in by_key) == [("second", 1), ("test", 4)]
    assert httpx.get(url, headers=other.headers).json()["total"]["requests"] == 0  # nobody else's usage
    assert httpx.get(url, params={"group_by": "user"}, headers=user.headers).status_code == 400
    bad_range = httpx.get(url, params={"from": "2026-02-01", "to": "2026-01-01"}, headers=user.headers)
    assert bad_range.status_code == 400 and bad_range.json()["error"]["param"] == "from"

    # The admin: the chart over the rows, and the CSV export of the selected rows.
    admin = User.objects.create_superuser("usage-admin", "u@example.com", "pw-12345-long")
    client.force_login(admin)
    page = client.get("/admin/inference/usagedaily/")
    assert page.status_code == 200 and b'id="usage-chart"' in page.content
    rows = list(UsageDaily.objects.filter(user=user.user))
    exported = client.post(
        "/admin/inference/usagedaily/",
        {"action": "export_csv", "_selected_action": [str(r.pk) for r in rows]},
    )
    assert exported.status_code == 200 and exported["Content-Type"] == "text/csv"
    lines = list(csv.DictReader(io.StringIO(exported.content.decode())))
    assert len(lines) == len(rows)
    assert sum(Decimal(line["cost"]) for line in lines) == expected_cost
    assert sum(int(line["completion_tokens"]) for line in lines) == completion
    assert {line["user"] for line in lines} == {user.user.username}


def test_a_jobs_timeline_is_ordered_and_complete(
    live: Live, make_api_user: Callable[..., ApiUser], client: Client
) -> None:
    user = make_api_user()
    response = httpx.post(
        f"{live.base_url}/api/v1/jobs",
        json={"prompt": "The river", "max_tokens": 6, "ignore_eos": True},
        headers=user.headers,
        timeout=30,
    )
    assert response.status_code == 202
    job_id = response.json()["id"]
    wait_until(
        lambda: (
            httpx.get(f"{live.base_url}/api/v1/jobs/{job_id}", headers=user.headers).json()["status"]
            == "succeeded"
        ),
        timeout=60,
        what="the job to finish",
    )
    body = httpx.get(f"{live.base_url}/api/v1/jobs/{job_id}", headers=user.headers).json()
    timings = body["timings"]
    steps = ["received_at", "admitted_at", "queued_at", "started_at", "first_token_at", "finished_at"]
    assert all(timings[step] for step in steps), timings
    assert [timings[s] for s in steps] == sorted(timings[s] for s in steps)  # ISO 8601, one offset
    for span in ("admission_wait_ms", "queue_ms", "prefill_ms", "time_to_first_token_ms", "generation_ms"):
        assert timings[span] is not None and timings[span] >= 0, (span, timings)
    assert timings["total_ms"] >= timings["time_to_first_token_ms"]
    assert timings["worker"] and timings["attempt"] == 1 and timings["tokens_streamed"] == 6
    assert timings["finish_reason"] == "length"
    # The rendered prompt is the operator's to see, not part of the owner's API.
    job = Job.objects.get(id=job_id)
    assert job.rendered_prompt and "rendered_prompt" not in body
    admin = User.objects.create_superuser("timeline-admin", "t@example.com", "pw-12345-long")
    client.force_login(admin)
    page = client.get(f"/admin/inference/job/{job_id}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="job-timeline"' in html and 'id="rendered-prompt"' in html
    assert job.worker in html
    # A running job (no first token yet) says "not yet", never "None ms".
    Job.objects.filter(id=job_id).update(status="running", first_token_at=None, finished_at=None)
    running = client.get(f"/admin/inference/job/{job_id}/change/").content.decode()
    timeline = running[running.index('id="job-timeline"') :].split("</table>")[0]
    assert "not yet" in timeline and "None" not in timeline
