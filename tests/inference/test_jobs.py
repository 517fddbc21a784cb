"""Job services on real Postgres and Valkey: creation, publishing, cancel, reconciliation.

A model name that no worker consumes keeps published messages in its queue, so the tests can
see exactly what was sent.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from inference.core.broker import celery_queue_keys
from inference.core.redis import get_redis
from inference.jobs.cancel import job_cancel
from inference.jobs.create import job_create
from inference.jobs.reconcile import jobs_reconcile
from inference.models import DeadLetter, Job, JobStatus
from inference.sampling_params import SamplingParams
from inference.store import get_streams
from inference.versions.registry import ServedModel, queue_for
from tests.support.redis_entries import stream_entries

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(demo_model_dir: Path, settings: object) -> ServedModel:
    settings.SLUICE_MODEL_NAME = "unserved"  # type: ignore[attr-defined]
    clear_queue("unserved")
    return ServedModel(name="unserved", path=demo_model_dir)


def clear_queue(name: str) -> None:
    get_redis().delete(*celery_queue_keys(queue_for(name)))


def queued_job_ids(name: str) -> list[str]:
    """Job ids in the model's Celery queue, highest priority first (kombu: one list a step)."""
    ids = []
    for key in celery_queue_keys(queue_for(name)):
        for raw in reversed(get_redis().lrange(key, 0, -1)):  # LPUSH/BRPOP: oldest at the tail
            message = json.loads(raw)
            ids.append(json.loads(base64.b64decode(message["body"]))[0][0])
    return ids


def create(model: ServedModel, user: User) -> Job:
    return job_create(
        user=user, api_key_id=None, model=model, kind="completion", input={"prompt": "x"}, params=SamplingParams(max_tokens=4),
        source="jobs",
    )  # fmt: skip


def test_create_persists_opens_the_stream_and_publishes(model: ServedModel) -> None:
    user = User.objects.create(username="u1")
    job = create(model, user)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.published_at is not None
    assert job.deadline_at is not None and job.deadline_at > job.queued_at
    assert queued_job_ids("unserved") == [str(job.id)]
    assert stream_entries(str(job.id))[0][1] == {"t": "queued"}


def test_reconciler_publishes_what_was_never_published(model: ServedModel) -> None:
    user = User.objects.create(username="u2")
    job = create(model, user)
    clear_queue("unserved")
    old = timezone.now() - timedelta(seconds=60)
    Job.objects.filter(id=job.id).update(published_at=None, queued_at=old)
    assert jobs_reconcile()["published"] == 1
    assert queued_job_ids("unserved") == [str(job.id)]
    assert Job.objects.get(id=job.id).published_at is not None
    assert jobs_reconcile()["published"] == 0


def test_reconciler_resends_a_running_job_without_a_live_lease_once(model: ServedModel) -> None:
    user = User.objects.create(username="u3")
    orphan = create(model, user)
    alive = create(model, user)
    clear_queue("unserved")
    Job.objects.filter(id__in=[orphan.id, alive.id]).update(status=JobStatus.RUNNING, attempts=1)
    get_streams().lease_acquire(str(alive.id), "a-live-worker", ttl_s=30)
    assert jobs_reconcile()["requeued"] == 1
    assert queued_job_ids("unserved") == [str(orphan.id)]
    assert jobs_reconcile()["requeued"] == 0  # the re-send is in flight: not again


def test_reconciler_gives_up_after_max_attempts(model: ServedModel, settings: object) -> None:
    user = User.objects.create(username="u4")
    job = create(model, user)
    Job.objects.filter(id=job.id).update(status=JobStatus.RUNNING, attempts=settings.SLUICE_MAX_ATTEMPTS)  # type: ignore[attr-defined]
    assert jobs_reconcile()["failed"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finish_reason == "worker_lost"
    assert "lost on each of" in job.error
    letter = DeadLetter.objects.get(job=job)
    assert letter.reason == "worker_lost" and letter.attempts == settings.SLUICE_MAX_ATTEMPTS  # type: ignore[attr-defined]
    assert letter.history[-1]["reason"] == "worker_lost"
    end = stream_entries(str(job.id))[-1][1]
    assert end["t"] == "end" and end["s"] == "failed"


def test_reconciler_fails_jobs_past_their_deadline(model: ServedModel) -> None:
    user = User.objects.create(username="u5")
    job = create(model, user)
    Job.objects.filter(id=job.id).update(deadline_at=timezone.now() - timedelta(minutes=5))
    assert jobs_reconcile()["failed"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finish_reason == "deadline"


def test_cancel(model: ServedModel) -> None:
    user = User.objects.create(username="u6")
    queued = job_cancel(job=create(model, user))
    assert queued.status == JobStatus.CANCELLED and queued.cancel_requested_at is not None
    running = create(model, user)
    Job.objects.filter(id=running.id).update(status=JobStatus.RUNNING)
    running = job_cancel(job=running)
    assert running.status == JobStatus.RUNNING  # the engine stops it at its next step
    assert get_streams().cancel_requested(str(running.id))


def test_reconciler_serves_the_whole_fleet(model: ServedModel) -> None:
    """A worker that serves another model still re-sends this model's orphaned jobs."""
    user = User.objects.create(username="u7")
    job = create(model, user)
    clear_queue("unserved")
    Job.objects.filter(id=job.id).update(status=JobStatus.RUNNING, attempts=1)
    from django.test import override_settings

    with override_settings(SLUICE_MODEL_NAME="something-else"):
        assert jobs_reconcile()["requeued"] == 1
    assert queued_job_ids("unserved") == [str(job.id)]


def test_generated_nul_bytes_are_stored_safely(model: ServedModel) -> None:
    """A byte-level model can generate a NUL; Postgres text cannot hold one. The row keeps
    U+FFFD in its place (the stream, which clients read, keeps the exact text)."""
    from inference.batching import FinishReason
    from inference.engine import SequenceResult
    from inference.jobs.finish import job_finish
    from inference.streams import Progress

    user = User.objects.create(username="nul")
    job = create(model, user)
    Job.objects.filter(id=job.id).update(status=JobStatus.RUNNING, attempts=1)
    job.refresh_from_db()
    result = SequenceResult(
        key=str(job.id), finish_reason=FinishReason.LENGTH, text="a\x00b", token_ids=[1, 2, 3],
        logprobs=[0.0] * 3, prompt_tokens=2, completion_tokens=3,
    )  # fmt: skip
    assert job_finish(job=job, attempt=1, token="", result=result, progress=Progress()) is True
    stored = Job.objects.get(id=job.id)
    assert stored.status == JobStatus.SUCCEEDED and stored.output_text == "a\ufffdb"


def test_a_version_deleted_after_routing_gets_its_job_rerouted(
    model: ServedModel, demo_model_dir: Path
) -> None:
    """A web process routes with a registry cached for a few seconds: a version deleted (and
    replaced) meanwhile must not turn the insert's foreign-key failure into a 500."""
    from inference.models import ModelVersion
    from inference.versions.registry import VersionGone, registry_invalidate, version_by_id, version_queue

    user = User.objects.create(username="u-gone")
    old = ModelVersion.objects.create(
        served_name="gone", label="v1", path=str(demo_model_dir), status="stable"
    )
    registry_invalidate()
    routed = version_by_id(old.pk)
    assert routed is not None
    old.delete()
    new = ModelVersion.objects.create(
        served_name="gone", label="v2", path=str(demo_model_dir), status="stable"
    )
    try:
        job = create(routed, user)  # the stale ServedModel still names the deleted row
        assert job.model_version_id == new.pk
        assert Job.objects.filter(pk=job.pk, model_version_id=new.pk).exists()
        # Nothing left to take it: a clear refusal (the gateway's 404), and no job row.
        stale = version_by_id(new.pk)
        assert stale is not None
        new.delete()
        before = Job.objects.count()
        with pytest.raises(VersionGone):
            create(stale, user)
        assert Job.objects.count() == before
    finally:
        Job.objects.filter(user=user).delete()
        ModelVersion.objects.filter(served_name="gone").delete()
        get_redis().delete(*celery_queue_keys(version_queue(new.pk)))
        registry_invalidate()
