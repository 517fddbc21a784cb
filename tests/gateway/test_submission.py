"""The one submit path, below the views: what a failed or unfinished job answers, replays of an
Idempotency-Key, and admission through the real limiter (the suite's Valkey) with the caller's
policy in the test database. No job is created here (that is the job client's, tested with
the live server), so no worker is needed."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import StreamingHttpResponse

from gateway.errors import ApiError
from gateway.idempotency import IdempotencyClaim
from gateway.models import RateLimitPolicy, UserRateLimit
from gateway.prepare import PreparedRequest
from gateway.submission import Caller, Submission, raise_for_failed, submit_all
from inference.core.redis import get_redis
from inference.models import Job, JobStatus
from inference.sampling_params import SamplingParams
from inference.versions.registry import ServedModel
from tests.conftest import TEST_MODEL_NAME


@pytest.fixture
def model(demo_model_dir: Path) -> ServedModel:
    # A name of its own: the model's in-flight slots here are never the live server's.
    return ServedModel(name=f"{TEST_MODEL_NAME}-submission", path=demo_model_dir)


def prepared(model: ServedModel, *, prompt_tokens: int = 10, max_tokens: int = 20) -> PreparedRequest:
    return PreparedRequest(
        model=model,
        kind="completion",
        input={"prompt": "x"},
        params=SamplingParams(max_tokens=max_tokens),
        prompt_tokens=prompt_tokens,
    )


def pending_claim(*, job_ids: list[str] | None = None) -> IdempotencyClaim:
    """A claim as `IdempotencyClaim.begin` leaves it: its record written in Redis."""
    claim = IdempotencyClaim(key=f"sluice:idem:test:{uuid.uuid4().hex}", digest="d", job_ids=job_ids or [])
    state = {"h": "d", "state": "done", "jobs": job_ids} if job_ids else {"h": "d", "state": "pending"}
    get_redis().set(claim.key, json.dumps(state), ex=60)
    claim.settled = bool(job_ids)
    return claim


def limited_user(username: str, **limits: Any) -> User:
    """A user under a policy of their own; a refusal never waits (max_queue_wait_s 0)."""
    user = User.objects.create(username=username)
    values: dict[str, Any] = {
        "requests_per_minute": 0,
        "tokens_per_minute": 0,
        "max_concurrent": 0,
        "max_queue_wait_s": 0.0,
        "burst": 1.0,
        **limits,
    }
    UserRateLimit.objects.create(
        user=user, policy=RateLimitPolicy.objects.create(name=f"p-{username}", **values)
    )
    return user


@pytest.mark.parametrize(
    ("status", "finish_reason", "error", "expected"),
    [
        (
            JobStatus.FAILED,
            "deadline",
            "",
            (504, "timeout", "The request did not finish within the server's time limit."),
        ),
        (
            JobStatus.FAILED,
            "error",
            "CUDA out of memory",
            (500, "generation_failed", "The model failed to generate a response: CUDA out of memory"),
        ),
        (
            JobStatus.FAILED,
            "error",
            "",
            (500, "generation_failed", "The model failed to generate a response: unknown error"),
        ),
    ],
)
def test_a_failed_job_is_an_error_not_an_empty_answer(
    status: str, finish_reason: str, error: str, expected: tuple[int, str, str]
) -> None:
    job = Job(status=status, finish_reason=finish_reason, error=error)
    with pytest.raises(ApiError) as refused:
        raise_for_failed(job)
    assert (refused.value.status_code, refused.value.error_code, refused.value.message) == expected


def test_an_unfinished_job_is_a_timeout_naming_it_and_an_ended_one_passes() -> None:
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        job = Job(status=status)
        with pytest.raises(ApiError) as refused:
            raise_for_failed(job)
        assert (refused.value.status_code, refused.value.error_code) == (504, "timeout")
        assert refused.value.message.endswith(f"it keeps running as job {job.id}")
    raise_for_failed(Job(status=JobStatus.SUCCEEDED, finish_reason="length"))
    raise_for_failed(Job(status=JobStatus.CANCELLED, finish_reason="cancelled"))


def test_a_replay_is_neither_admitted_nor_waited_for(model: ServedModel) -> None:
    caller = Caller(user=User(pk=1, username="nobody"))
    fresh = Submission(caller=caller, prepared=prepared(model), source="test")
    assert not fresh.replay
    assert not Submission(caller, prepared(model), "test", idempotency=IdempotencyClaim("k", "d")).replay
    replay = Submission(
        caller, prepared(model), "test", idempotency=IdempotencyClaim("k", "d", job_ids=["j"])
    )
    assert replay.replay
    assert replay.admit() is None and replay.admission is None
    replay.wait_admitted()  # returns at once: nothing to wait for
    replay.abandon()  # nothing was admitted: nothing to give back
    assert replay.admission is None


def test_creating_before_admission_is_refused_and_frees_the_idempotency_key(model: ServedModel) -> None:
    claim = pending_claim()
    submission = Submission(
        Caller(user=User(pk=1, username="nobody")), prepared(model), "test", idempotency=claim
    )
    with pytest.raises(RuntimeError, match="submit before admit"):
        submission.create()
    assert claim.settled and not get_redis().exists(claim.key)  # a retry under the key is a new request


def test_a_replay_answers_with_the_callers_earlier_jobs(db: None, model: ServedModel) -> None:
    owner = User.objects.create(username="replay-owner")
    jobs = [
        Job.objects.create(user=owner, model=TEST_MODEL_NAME, kind="completion", input={"prompt": str(i)})
        for i in range(2)
    ]
    claim = pending_claim(job_ids=[str(job.id) for job in jobs])
    submissions = [
        Submission(Caller(user=owner), prepared(model), "test", idempotency=claim, index=i) for i in range(2)
    ]
    assert submit_all(submissions) == jobs  # in the batch's order, nothing admitted
    assert all(s.admission is None for s in submissions)
    assert json.loads(get_redis().get(claim.key))["jobs"] == [str(job.id) for job in jobs]  # type: ignore[arg-type]
    assert submit_all([]) == []
    # The key is per user, and so is the lookup: another user's id never answers.
    stranger = User.objects.create(username="replay-stranger")
    with pytest.raises(Job.DoesNotExist):
        Submission(Caller(user=stranger), prepared(model), "test", idempotency=claim).create()


def test_a_replayed_stream_is_the_earlier_jobs_event_stream(db: None, model: ServedModel) -> None:
    owner = User.objects.create(username="replay-stream")
    job = Job.objects.create(user=owner, model=TEST_MODEL_NAME, kind="completion", input={"prompt": "x"})
    streamed: list[Job] = []

    def stream_for(job: Job) -> AsyncIterator[bytes]:
        streamed.append(job)

        async def events() -> AsyncIterator[bytes]:
            yield b"data: [DONE]\n\n"

        return events()

    claim = pending_claim(job_ids=[str(job.id)])
    response = Submission(Caller(user=owner), prepared(model), "test", idempotency=claim).stream(
        stream_for, refused=lambda exc: []
    )
    assert isinstance(response, StreamingHttpResponse) and response["Content-Type"] == "text/event-stream"
    assert streamed == [job]


def test_admission_sets_the_rate_limit_headers_and_abandon_refunds_the_tokens(
    db: None, model: ServedModel
) -> None:
    user = limited_user("tokens-60", tokens_per_minute=60, requests_per_minute=100)
    cost = prepared(model, prompt_tokens=10, max_tokens=20).cost
    assert cost == 30
    first = Submission(Caller(user=user), prepared(model), "test")
    admission = first.admit()
    assert admission is not None and admission.admitted and first.admission is admission
    headers = admission.headers  # what the view puts on its response
    assert headers["x-ratelimit-limit-tokens"] == "60" and headers["x-ratelimit-remaining-tokens"] == "30"
    assert headers["x-ratelimit-limit-requests"] == "100" and headers["x-sluice-policy"] == "p-tokens-60"
    first.wait_admitted()  # admitted already: returns at once
    first.abandon()  # the job will not be created: its 30 tokens go back
    again = Submission(Caller(user=user), prepared(model), "test")
    assert again.admit() is not None
    assert again.admission is not None and again.admission.headers["x-ratelimit-remaining-tokens"] == "30"
    again.abandon()


def test_a_refused_batch_frees_its_key_and_gives_back_what_it_was_granted(
    db: None, model: ServedModel
) -> None:
    user = limited_user("tokens-60-batch", tokens_per_minute=60)
    claim = pending_claim()  # one claim for the whole batch, as the views share it
    batch = [
        Submission(Caller(user=user), prepared(model), "test", idempotency=claim, index=0),  # 30 tokens
        Submission(
            Caller(user=user), prepared(model, max_tokens=30), "test", idempotency=claim, index=1
        ),  # 40
    ]
    with pytest.raises(ApiError) as refused:
        submit_all(batch)
    assert (refused.value.status_code, refused.value.error_code) == (429, "rate_limit_exceeded")
    assert refused.value.openai_type == "tokens"  # short of tokens, not of requests
    assert "Retry-After" in refused.value.extra_headers
    assert claim.settled and not get_redis().exists(claim.key)  # a retry under the key is a new request
    # The first one's admission was given back: the whole bucket can be taken again at once.
    whole = Submission(Caller(user=user), prepared(model, prompt_tokens=30, max_tokens=30), "test")
    assert whole.admit() is not None and whole.admission is not None and whole.admission.admitted
    with pytest.raises(ApiError):
        Submission(Caller(user=user), prepared(model), "test").admit()  # 30 more: not for 30 s
    whole.abandon()
