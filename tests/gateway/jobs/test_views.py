"""Native jobs API: submit, poll, follow (SSE with Last-Event-ID), cancel, and isolation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.processes import wait_until
from inference.models import Job, JobStatus
from tests.conftest import ApiUser, Live
from tests.support.sse import read_events

pytestmark = pytest.mark.e2e


def submit(live: Live, user: ApiUser, **body: object) -> dict[str, Any]:
    response = httpx.post(f"{live.base_url}/api/v1/jobs", json=body, headers=user.headers, timeout=30)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/api/v1/jobs/{response.json()['id']}"
    return response.json()


def wait_finished(live: Live, user: ApiUser, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = httpx.get(f"{live.base_url}/api/v1/jobs/{job_id}", headers=user.headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_submit_poll_and_follow(live: Live, api_user: ApiUser) -> None:
    # ignore_eos: the tiny test model is trained on a time budget, so where it would emit
    # end-of-sequence varies between machines; the test is about the event protocol.
    job = submit(live, api_user, prompt="The river", max_tokens=16, temperature=0, ignore_eos=True)
    assert job["status"] == "queued"
    events = read_events(f"{live.base_url}/api/v1/jobs/{job['id']}/events", api_user.headers)
    kinds = [e.event for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "end"
    assert set(kinds[2:-1]) == {"token"}
    end = events[-1].data
    assert end["status"] == "succeeded" and end["finish_reason"] == "length"
    assert end["usage"]["completion_tokens"] == 16
    final = wait_finished(live, api_user, str(job["id"]))
    assert final["output"]["text"] == "".join(e.data["text"] for e in events if e.event == "token")
    assert final["usage"] == end["usage"]
    listed = httpx.get(f"{live.base_url}/api/v1/jobs", headers=api_user.headers).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]


def test_last_event_id_resumes_exactly_after_the_last_event_seen(live: Live, api_user: ApiUser) -> None:
    job = submit(
        live,
        api_user,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=40,
        temperature=0,
    )
    url = f"{live.base_url}/api/v1/jobs/{job['id']}/events"
    first = read_events(url, api_user.headers, limit=8)  # disconnect part-way
    resumed = read_events(url, {**api_user.headers, "Last-Event-ID": str(first[-1].id)})
    whole = read_events(url, api_user.headers)  # the job has finished by now: a full replay
    assert [e.id for e in first + resumed] == [e.id for e in whole]
    assert [e.data for e in first + resumed] == [e.data for e in whole]
    # Resuming after the end event yields nothing more and closes at once.
    started = time.monotonic()
    assert read_events(url, {**api_user.headers, "Last-Event-ID": str(whole[-1].id)}) == []
    assert time.monotonic() - started < 2
    # A query parameter works too (EventSource cannot set headers on the first request).
    middle = whole[len(whole) // 2]
    rest = read_events(f"{url}?last_event_id={middle.id}", api_user.headers)
    assert [e.id for e in rest] == [e.id for e in whole[len(whole) // 2 + 1 :]]


def test_bad_last_event_id(live: Live, api_user: ApiUser) -> None:
    job = submit(live, api_user, prompt="x y", max_tokens=2)
    response = httpx.get(
        f"{live.base_url}/api/v1/jobs/{job['id']}/events",
        headers={**api_user.headers, "Last-Event-ID": "nope"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Last-Event-ID"


def test_cancel_a_running_job(live: Live, api_user: ApiUser) -> None:
    job = submit(live, api_user, prompt="Once upon a time", max_tokens=480, temperature=0, ignore_eos=True)
    url = f"{live.base_url}/api/v1/jobs/{job['id']}"
    read_events(f"{url}/events", api_user.headers, limit=4)  # it is generating
    response = httpx.post(f"{url}/cancel", headers=api_user.headers)
    assert response.status_code == 202
    final = wait_finished(live, api_user, str(job["id"]))
    assert final["status"] == "cancelled"
    assert final["output"]["finish_reason"] == "cancelled"
    assert 0 < final["usage"]["completion_tokens"] < 480
    end = read_events(f"{url}/events", api_user.headers)[-1]
    assert end.event == "end" and end.data["status"] == "cancelled"


def test_cancel_a_queued_job_never_runs_it(live: Live, api_user: ApiUser) -> None:
    """A job cancelled before any worker starts it is final at once; the worker that later
    receives its message drops it."""
    from inference.jobs.cancel import job_cancel
    from inference.jobs.create import job_create
    from inference.sampling_params import SamplingParams
    from inference.versions.registry import ServedModel

    ghost = ServedModel(name="nobody-serves-this", path=Path("/nonexistent"))
    created = job_create(
        user=api_user.user,
        api_key_id=None,
        model=ghost,
        kind="completion",
        input={"prompt": "x"},
        params=SamplingParams(max_tokens=5),
        source="jobs",
    )
    job = job_cancel(job=created)
    assert job.status == JobStatus.CANCELLED and job.started_at is None
    events = read_events(f"{live.base_url}/api/v1/jobs/{job.id}/events", api_user.headers)
    assert [e.event for e in events] == ["queued", "end"]
    assert events[-1].data["status"] == "cancelled"


def test_users_only_see_their_own_jobs(live: Live, make_api_user: object) -> None:
    alice, bob = make_api_user("alice"), make_api_user("bob")  # type: ignore[operator]
    job = submit(live, alice, prompt="secret", max_tokens=3)
    base = f"{live.base_url}/api/v1/jobs/{job['id']}"
    for method, url in [("GET", base), ("GET", f"{base}/events"), ("POST", f"{base}/cancel")]:
        response = httpx.request(method, url, headers=bob.headers)
        assert response.status_code == 404, (method, url)
        assert response.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{live.base_url}/api/v1/jobs", headers=bob.headers).json()["data"] == []
    # Not-a-uuid and unknown ids look the same as someone else's.
    assert httpx.get(f"{live.base_url}/api/v1/jobs/not-a-uuid", headers=bob.headers).status_code == 404
    wait_finished(live, alice, str(job["id"]))
    assert Job.objects.get(id=job["id"]).user == alice.user


def test_chat_job_and_sampling_parameters(live: Live, api_user: ApiUser) -> None:
    job = submit(
        live,
        api_user,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        max_tokens=10,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        seed=5,
        stop=["\n\n"],
    )
    final = wait_finished(live, api_user, str(job["id"]))
    assert final["status"] == "succeeded"
    assert final["params"] == {
        "max_tokens": 10,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 5,
        "stop": ["\n\n"],
        "ignore_eos": False,
    }
    wait_until(lambda: Job.objects.get(id=job["id"]).finished_at is not None, timeout=5, what="row")
