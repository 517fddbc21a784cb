"""A higher rate-limit tier is served first: its jobs leave the Celery queue first (kombu
Redis priorities) and a worker runs them first. A worker with one slot makes the order visible."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from config.processes import wait_until, worker_process
from inference.jobs.create import job_create
from inference.models import Job, JobStatus
from inference.sampling_params import SamplingParams
from inference.versions.registry import ServedModel
from tests.conftest import ApiUser, child_env

pytestmark = pytest.mark.e2e

MODEL = "priotest"


def test_higher_tiers_leave_the_queue_first(
    test_database_url: str,
    demo_model_dir: Path,
    make_api_user: Callable[..., ApiUser],
    tmp_path: Path,
) -> None:
    user = make_api_user().user
    model = ServedModel(name=MODEL, path=demo_model_dir)
    # Queued while no worker serves the model: low tiers first, then higher ones.
    tiers = [0, 0, 0, 5, 5, 9]
    jobs = [
        job_create(
            user=user,
            api_key_id=None,
            model=model,
            kind="completion",
            input={"prompt": f"Job {i}"},
            params=SamplingParams(max_tokens=2, temperature=0),
            source="jobs",
            priority=tier,
        )
        for i, tier in enumerate(tiers)
    ]
    env = child_env(
        test_database_url,
        demo_model_dir,
        SLUICE_MODEL_NAME=MODEL,
        SLUICE_WORKER_MODELS=MODEL,
        SLUICE_MAX_BATCH_SIZE="1",
    )
    worker = worker_process(env, model=MODEL, name="prio-worker", log_dir=tmp_path, concurrency=1).start()
    try:
        wait_until(
            lambda: (
                Job.objects.filter(id__in=[j.id for j in jobs], status=JobStatus.SUCCEEDED).count()
                == len(jobs)
            ),
            timeout=120,
            what=f"the jobs to run:\n{worker.log_tail()}",
        )
    finally:
        worker.stop()
    started = Job.objects.filter(id__in=[j.id for j in jobs]).order_by("started_at")
    assert [job.priority for job in started] == sorted(tiers, reverse=True)
