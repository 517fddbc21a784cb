"""Retries with backoff and the dead-letter queue, end to end: a version whose upstream is
down retries each job up to its version's limit, then dead-letters it with its history; the
upstream comes back, an operator requeues the job from the admin, and a client following its
stream sees it continue under the same id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client

from config.processes import ServerProcess, free_port, wait_ready, wait_until, web_process, worker_process
from inference.core.redis import get_redis
from inference.models import DeadLetter, Job, JobStatus, ModelVersion
from tests.conftest import ApiUser, Live, child_env
from tests.support.redis_entries import stream_entries
from tests.support.sse import iter_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "dlq"


@pytest.fixture
def upstream_port() -> int:
    return free_port()


@pytest.fixture
def dlq_version(
    live: Live, demo_model_dir: Path, upstream_port: int, api_user: ApiUser
) -> Iterator[ModelVersion]:
    version = ModelVersion.objects.create(
        api_key=api_user.key,  # the upstream is another Sluice, which wants a key
        served_name=NAME,
        label="remote",
        backend="tgi",
        url=f"http://127.0.0.1:{upstream_port}",  # nothing listens there yet
        path=str(demo_model_dir),
        status="stable",
        max_attempts=2,
    )
    yield version
    ModelVersion.objects.filter(pk=version.pk).delete()


def serving(worker: str) -> bool:
    client = get_redis()
    for key in client.scan_iter(match="sluice:worker:*"):
        raw = client.get(key)
        if raw and NAME in json.loads(raw).get("models", []) and worker in json.loads(raw)["name"]:
            return True
    return False


def test_retries_then_dead_letter_then_requeue(
    live: Live,
    api_user: ApiUser,
    dlq_version: ModelVersion,
    upstream_port: int,
    test_database_url: str,
    demo_model_dir: Path,
    tmp_path: Path,
) -> None:
    env = child_env(
        test_database_url,
        demo_model_dir,
        SLUICE_WORKER_MODELS=NAME,
        SLUICE_TGI_RETRIES="1",
        SLUICE_TGI_BACKOFF_S="0.1",
        SLUICE_TGI_TIMEOUT_S="5",
        SLUICE_RETRY_BACKOFF_S="0.3",
        SLUICE_REGISTRY_CACHE_S="0.5",
    )
    worker: ServerProcess = worker_process(env, model=NAME, name="dlq-worker", log_dir=tmp_path).start()
    upstream: ServerProcess | None = None
    try:
        wait_until(lambda: serving("dlq-worker"), timeout=90, what="the worker")
        wait_until(
            lambda: NAME in httpx.get(f"{live.base_url}/v1/models", headers=api_user.headers).text,
            timeout=30,
            what="the web server to see the version",
        )
        job_id = httpx.post(
            f"{live.base_url}/api/v1/jobs",
            json={"model": NAME, "prompt": "The river", "max_tokens": 6, "temperature": 0},
            headers=api_user.headers,
            timeout=30,
        ).json()["id"]
        wait_until(lambda: Job.objects.get(id=job_id).is_terminal, timeout=60, what="the retries to run out")
        job = Job.objects.get(id=job_id)
        assert job.status == JobStatus.FAILED and job.finish_reason == "upstream_error"
        letter = DeadLetter.objects.get(job_id=job_id)
        assert letter.reason == "upstream_error" and letter.attempts == 2 and letter.model == NAME
        assert [entry["attempt"] for entry in letter.history] == [1, 2]
        kinds = [fields["t"] for _, fields in stream_entries(job_id)]
        assert kinds == ["queued", "start", "retry", "start", "end"]
        end_id = stream_entries(job_id)[-1][0]
        metrics = httpx.get(f"{live.base_url}/metrics").text
        assert f'sluice_dead_letters_total{{model="{NAME}",reason="upstream_error"}} 1.0' in metrics

        # The upstream comes back (a TGI-compatible server: another Sluice), and an operator
        # requeues the job from the admin.
        upstream = web_process(live.env, upstream_port, tmp_path).start()
        wait_ready(f"http://127.0.0.1:{upstream_port}", [upstream])
        from django.contrib.auth.models import User

        staff = User.objects.create_superuser("dlq-ops", password="pw-dlq-ops-1")
        browser = Client()
        browser.force_login(staff)
        page = browser.post(
            "/admin/inference/deadletter/",
            {"action": "requeue", "_selected_action": [str(letter.pk)]},
            follow=True,
        )
        assert page.status_code == 200 and b"Requeued 1 job" in page.content
        # A client that had seen the end resumes after it, and sees the job continue.
        events: list[Any] = []
        with (
            httpx.Client(timeout=60) as http,
            http.stream(
                "GET",
                f"{live.base_url}/api/v1/jobs/{job_id}/events",
                headers={**api_user.headers, "Last-Event-ID": end_id},
            ) as response,
        ):
            for event in iter_events(response):
                events.append(event)
                if event.event == "end":
                    break
        assert events[-1].data["status"] == "succeeded", events[-1]
        assert sum(len(e.data["token_ids"]) for e in events if e.event == "token") == 6
        job = Job.objects.get(id=job_id)
        assert job.status == JobStatus.SUCCEEDED and job.completion_tokens == 6
        letter.refresh_from_db()
        assert letter.state == "requeued" and letter.requeue_count == 1 and letter.handled_by == "dlq-ops"
    finally:
        worker.stop()
        if upstream is not None:
            upstream.stop()
