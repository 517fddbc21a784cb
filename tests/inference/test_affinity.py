"""Session affinity: a session's turns stay on the worker whose prefix cache holds them while
two workers serve, and fall back to the shared queue when that worker is saturated or killed."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from config.processes import ServerProcess, wait_until, worker_process
from inference.affinity import Affinity, affinity_queue, decide, preferred_worker, version_loads
from inference.chat.services import session_create
from inference.core.broker import celery_queue_keys
from inference.core.redis import get_redis
from inference.jobs.cancel import job_cancel
from inference.jobs.create import job_create
from inference.models import Job, JobKind, JobStatus, ModelVersion
from inference.sampling_params import SamplingParams
from inference.versions.registry import ServedModel
from inference.worker.heartbeat import WORKERS_SEEN_KEY
from tests.conftest import ApiUser, child_env


def test_decide_prefers_the_worker_within_the_gap() -> None:
    assert decide(None, {"a": 0, "b": 0}, 2) is Affinity.NEW
    assert decide("a", {"b": 0}, 2) is Affinity.GONE
    assert decide("a", {"a": 2, "b": 0}, 2) is Affinity.PINNED  # exactly the gap: still worth it
    assert decide("a", {"a": 3, "b": 0}, 2) is Affinity.BUSY
    assert decide("a", {"a": 9, "b": 8}, 2) is Affinity.PINNED  # everybody busy: stay near the KV
    assert decide("a", {"a": 5}, 0) is Affinity.PINNED  # the only worker


@pytest.mark.django_db
def test_the_preferred_worker_ran_the_turn_before_on_the_same_version(api_user: ApiUser) -> None:
    model = ServedModel(name="prefers", path=Path("/nowhere"))
    session = session_create(user=api_user.user, title="t")

    def ran(worker: str, **fields: Any) -> Job:
        return Job.objects.create(
            user=api_user.user, model=model.name, kind=JobKind.CHAT, input={}, worker=worker, **fields
        )

    assert preferred_worker(model=model, session_id=session.id, previous_id=None) is None
    ran("one@h", session=session)
    ran("two@h", session=session)
    ran("", session=session)  # queued, not started yet: no worker to be near
    assert preferred_worker(model=model, session_id=session.id, previous_id=None) == "two@h"
    # A Responses chain: the worker of the response it continues.
    previous = ran("three@h")
    assert preferred_worker(model=model, session_id=None, previous_id=previous.id) == "three@h"
    assert preferred_worker(model=model, session_id=session.id, previous_id=previous.id) == "three@h"
    # Another version's worker holds another model's KV: nothing to be near.
    versioned = ModelVersion.objects.create(served_name="prefers", label="v2", path="/nowhere")
    v2 = ServedModel(name="prefers", path=Path("/nowhere"), version_id=versioned.pk, label="v2")
    assert preferred_worker(model=v2, session_id=session.id, previous_id=previous.id) is None


def test_loads_count_the_engine_and_the_own_queue() -> None:
    model = ServedModel(name="loadcount", path=Path("/nowhere"))
    client = get_redis()
    names = ["loadcount-a@h", "loadcount-b@h", "loadcount-c@h"]

    def heartbeat(name: str, running: int, waiting: int, key: str = model.key, error: str = "") -> None:
        version = {"key": key, "running": running, "waiting": waiting, "error": error}
        client.set(f"sluice:worker:{name}", json.dumps({"name": name, "versions": [version]}), ex=60)
        client.hset(WORKERS_SEEN_KEY, name, 1.0)

    try:
        heartbeat(names[0], 2, 1)
        heartbeat(names[1], 0, 0)
        heartbeat(names[2], 0, 0, error="load failed")  # serves nothing
        own = celery_queue_keys(affinity_queue(model.queue, names[1]))
        client.rpush(own[0], "m1", "m2")
        client.rpush(own[-1], "m3")  # another priority step of the same queue
        assert version_loads(model) == {names[0]: 3, names[1]: 3}
        assert decide(names[0], version_loads(model), 0) is Affinity.PINNED
        client.delete(*own)
        assert decide(names[0], version_loads(model), 0) is Affinity.BUSY
    finally:
        client.delete(*(f"sluice:worker:{n}" for n in names))
        client.hdel(WORKERS_SEEN_KEY, *names)
        client.delete(*celery_queue_keys(affinity_queue(model.queue, names[1])))


MODEL = "affinitytest"


def beat(name: str) -> dict[str, Any] | None:
    client = get_redis()
    for key in client.scan_iter(match="sluice:worker:*"):
        raw = client.get(key)
        if raw and name in json.loads(raw)["name"]:
            payload: dict[str, Any] = json.loads(raw)
            return payload
    return None


def version_beat(worker: str, key: str) -> dict[str, Any]:
    payload = beat(worker) or {}
    return next((v for v in payload.get("versions", []) if v["key"] == key), {})


def finished(job: Job, timeout: float = 120) -> Job:
    wait_until(
        lambda: Job.objects.get(id=job.id).status in (JobStatus.SUCCEEDED, JobStatus.FAILED),
        timeout=timeout,
        interval=0.05,
        what=f"job {job.id}",
    )
    done = Job.objects.get(id=job.id)
    assert done.status == JobStatus.SUCCEEDED, done.error
    return done


@pytest.mark.e2e
def test_a_session_stays_on_its_worker_and_falls_back(
    test_database_url: str,
    demo_model_dir: Path,
    api_user: ApiUser,
    tmp_path: Path,
    settings: Any,
) -> None:
    settings.SLUICE_AFFINITY_LOAD_GAP = 1
    # The tiny model with a long context: a long turn runs for many seconds (its own 2048
    # positions would end it in about one).
    model_dir = tmp_path / "long-context"
    shutil.copytree(demo_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    model = ServedModel(name=MODEL, path=model_dir)
    key = model.key
    # A dead worker's heartbeat expires after 6 s (15 s by default): the test waits for that.
    env = child_env(
        test_database_url,
        model_dir,
        SLUICE_MODEL_NAME=MODEL,
        SLUICE_WORKER_MODELS=MODEL,
        SLUICE_HEARTBEAT_TTL_S="6",
    )
    # Two task threads each: two long jobs fill a worker (prefetch 1), so a third goes elsewhere.
    workers: dict[str, ServerProcess] = {
        name: worker_process(env, model=MODEL, name=name, log_dir=tmp_path, concurrency=2).start()
        for name in ("alpha", "beta")
    }
    session = session_create(user=api_user.user, title="affinity")

    def turn(text: str, *, max_tokens: int = 12, long: bool = False) -> Job:
        return job_create(
            user=api_user.user,
            api_key_id=None,
            model=model,
            kind=JobKind.CHAT,
            input={"messages": [{"role": "user", "content": text}]},
            params=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=long),
            source="jobs",
            session_id=session.id,
        )

    try:
        wait_until(
            lambda: all(version_beat(name, key) for name in workers), timeout=120, what="both workers serving"
        )
        # Six turns while both serve: the first lands anywhere, the rest where it ran.
        jobs = []
        for i in range(6):
            jobs.append(finished(turn(f"Turn {i}: tell me about rivers and the sea, then more.")))
        home = jobs[0].worker
        assert jobs[0].affinity == Affinity.NEW
        assert [j.worker for j in jobs] == [home] * 6
        assert all(j.affinity == Affinity.PINNED and j.routed_worker == home for j in jobs[1:])
        home_name = next(name for name in workers if home.startswith(f"{name}@"))
        other_name = next(name for name in workers if name != home_name)
        # Each turn's history was in its worker's prefix cache.
        wait_until(
            lambda: int(version_beat(home_name, key).get("prefix_cache", {}).get("hit_tokens", 0)) > 0,
            timeout=30,
            what="prefix-cache hits on the session's worker",
        )

        # Saturated: two long turns run on the home worker (pinned: 0 then 1 over the other, the
        # gap is 1); with 2 running there, the next turn is 2 over and goes to the shared queue,
        # where only the other worker has a free thread.
        def running_at_home(count: int) -> bool:
            return int(version_beat(home_name, key).get("running", 0)) >= count

        long_jobs = []
        for count in (1, 2):
            long_jobs.append(turn("Keep talking about the sea.", max_tokens=6000, long=True))
            wait_until(
                functools.partial(running_at_home, count),
                timeout=60,
                what=f"{count} long turns on {home_name}",
            )
        assert [Job.objects.get(id=j.id).affinity for j in long_jobs] == [Affinity.PINNED] * 2
        busy = finished(turn("A short question while it is busy."))
        assert busy.affinity == Affinity.BUSY and busy.routed_worker == ""
        assert busy.worker.startswith(f"{other_name}@")
        for job in long_jobs:
            assert Job.objects.get(id=job.id).status == JobStatus.RUNNING  # it was busy throughout
            job_cancel(job=job)
        wait_until(
            lambda: all(Job.objects.get(id=j.id).is_terminal for j in long_jobs),
            timeout=60,
            what="the long turns to be cancelled",
        )

        # Killed: the session's worker (the last turn ran on the other one now) dies; a turn
        # published to its own queue while its heartbeat lives is moved to the shared queue.
        last = Job.objects.filter(session=session).order_by("-queued_at").first()
        assert last is not None and last.worker.startswith(f"{other_name}@")
        doomed, survivor = other_name, home_name
        workers[doomed].kill()
        orphan = turn("Are you still there?")
        assert Job.objects.get(id=orphan.id).affinity in (Affinity.PINNED, Affinity.GONE)
        rescued = finished(orphan, timeout=120)
        assert rescued.worker.startswith(f"{survivor}@")
        assert rescued.affinity == Affinity.GONE and rescued.routed_worker == ""
        # Nothing left waiting in the dead worker's own queue.
        client = get_redis()
        assert all(not client.llen(k) for k in celery_queue_keys(affinity_queue(model.queue, last.worker)))
        # And the session continues on the survivor, pinned again.
        wait_until(lambda: beat(doomed) is None, timeout=30, what="the dead worker's heartbeat to expire")
        after = finished(turn("Good, then continue."))
        assert after.affinity == Affinity.PINNED and after.worker == rescued.worker
    finally:
        for process in workers.values():
            process.stop()
