"""A worker killed with SIGKILL mid-generation loses no job: another worker resumes each one
from its stream, and late duplicate deliveries do nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from config.processes import wait_until, worker_process
from inference.backends.torch_local import TorchCausalLMBackend
from inference.core.redis import get_redis
from inference.jobs.create import job_create
from inference.jobs.publish import job_publish
from inference.models import Job, JobStatus
from inference.sampling_params import SamplingParams
from inference.store import get_streams
from inference.versions.registry import ServedModel
from tests.conftest import ApiUser, child_env
from tests.support.redis_entries import stream_entries

pytestmark = pytest.mark.e2e

MODEL = "killtest"
PROMPTS = [
    "The river",
    "A computer follows",
    "Mara kept bees",
    "Snow is made",
    "Bread needs",
    "The train left",
]
MAX_TOKENS = 300


def worker_up(name: str) -> bool:
    client = get_redis()
    for key in client.scan_iter(match="sluice:worker:*"):
        raw = client.get(key)
        if raw and MODEL in json.loads(raw).get("models", []) and name in json.loads(raw)["name"]:
            return True
    return False


def reference(model: ServedModel, prompt: str) -> list[int]:
    """The same greedy generation, uninterrupted, in this process."""
    info = model.info
    backend = TorchCausalLMBackend(model.path, threads=1, eos_token_ids=[], vocab_decode=info.decode)
    ids = info.completion_prompt_ids(prompt)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
    first = backend.add(["r"], [ids], [params])["r"]
    assert not isinstance(first, Exception)
    out = [first.token_id]
    while len(out) < MAX_TOKENS:
        step = backend.step()["r"]
        assert not isinstance(step, Exception)
        out.append(step.token_id)
    return out


def entries(job_id: str) -> list[dict[str, str]]:
    return [fields for _, fields in stream_entries(job_id)]


def test_sigkill_with_a_full_batch(
    test_database_url: str, demo_model_dir: Path, api_user: ApiUser, tmp_path: Path
) -> None:
    model = ServedModel(name=MODEL, path=demo_model_dir)
    env = child_env(test_database_url, demo_model_dir, SLUICE_MODEL_NAME=MODEL, SLUICE_WORKER_MODELS=MODEL)
    first = worker_process(
        env, model=MODEL, name="doomed", log_dir=tmp_path, concurrency=len(PROMPTS)
    ).start()
    second = None
    try:
        wait_until(lambda: worker_up("doomed"), timeout=90, what="the first worker")
        jobs = [
            job_create(
                user=api_user.user,
                api_key_id=None,
                model=model,
                kind="completion",
                input={"prompt": prompt},
                params=SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
                source="jobs",
            )
            for prompt in PROMPTS
        ]
        ids = [str(job.id) for job in jobs]
        streams = get_streams()
        # Every job is in the batch and part-way through when the worker dies.
        wait_until(
            lambda: all(len(streams.progress(i).token_ids) >= 5 for i in ids),
            timeout=60,
            interval=0.002,
            what="all jobs to be generating",
        )
        first.kill()
        before = {i: len(streams.progress(i).token_ids) for i in ids}
        assert all(0 < n < MAX_TOKENS for n in before.values()), before
        assert all(Job.objects.get(id=i).status == JobStatus.RUNNING for i in ids)

        second = worker_process(
            env, model=MODEL, name="rescuer", log_dir=tmp_path, concurrency=len(PROMPTS)
        ).start()
        wait_until(
            lambda: all(Job.objects.get(id=i).status in (JobStatus.SUCCEEDED, JobStatus.FAILED) for i in ids),
            timeout=120,
            interval=0.1,
            what="the jobs to be finished by the second worker",
        )
        expected = {prompt: reference(model, prompt) for prompt in PROMPTS}
        for job_id, prompt in zip(ids, PROMPTS, strict=True):
            job = Job.objects.get(id=job_id)
            assert job.status == JobStatus.SUCCEEDED, job.error
            assert job.attempts == 2
            assert job.completion_tokens == MAX_TOKENS
            stream = entries(job_id)
            tokens = [int(t) for e in stream if e["t"] == "tok" for t in e["i"].split(",")]
            # Resumed, not restarted: no token twice, none missing, the same greedy text.
            assert tokens == expected[prompt]
            assert "".join(e["x"] for e in stream if e["t"] == "tok") == job.output_text
            assert job.output_text == model.info.decode(expected[prompt])
            assert [e["t"] for e in stream].count("start") == 2
            assert [e["t"] for e in stream].count("end") == 1

        # The broker redelivers the dead worker's unacked messages after the visibility
        # timeout; simulate those late duplicates now: they must change nothing.
        for job_id in ids:
            job_publish(job_id=job_id, queue=model.queue)
        time.sleep(3)
        for job_id in ids:
            job = Job.objects.get(id=job_id)
            assert job.attempts == 2 and job.status == JobStatus.SUCCEEDED
            assert [e["t"] for e in entries(job_id)].count("end") == 1
    finally:
        first.kill()
        if second is not None:
            second.stop()
