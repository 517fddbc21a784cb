"""OpenAI Responses API on durable jobs, driven by the unmodified `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from config.processes import ServerProcess, wait_until, worker_process
from gateway.models import RateLimitPolicy, UserRateLimit
from inference.core.redis import get_redis
from inference.models import Job, JobStatus, ModelVersion
from inference.prompts import model_info
from inference.store import get_streams
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live, child_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(live: Live, api_user: ApiUser) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0, timeout=60)


def job_of(response_id: str) -> Job:
    return Job.objects.get(id=response_id.removeprefix("resp_"))


def test_create_retrieve_and_input_items(client: openai.OpenAI, api_user: ApiUser) -> None:
    response = client.responses.create(
        model=TEST_MODEL_NAME,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Tell me about rivers."}]}],
        instructions="Answer briefly.",
        max_output_tokens=12,
        temperature=0,
        metadata={"ticket": "T-1"},
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.output_text and response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens <= 12
    assert response.metadata == {"ticket": "T-1"} and response.instructions == "Answer briefly."
    job = job_of(response.id)
    assert job.user == api_user.user and job.source == "responses" and job.status == JobStatus.SUCCEEDED
    assert job.output_text == response.output_text
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.status == response.status
    items = client.responses.input_items.list(response.id)
    assert [(item.type, item.role) for item in items.data] == [("message", "user")]  # type: ignore[union-attr]
    assert items.data[0].content[0].text == "Tell me about rivers."  # type: ignore[union-attr,index]


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, demo_model_dir: Path) -> None:
    first = client.responses.create(
        model=TEST_MODEL_NAME,
        input="What is a river?",
        max_output_tokens=8,
        temperature=0,
        instructions="Be kind.",
    )
    second = client.responses.create(
        model=TEST_MODEL_NAME,
        input="And a lake?",
        previous_response_id=first.id,
        max_output_tokens=8,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    # The model saw the first turn (its input and output) before the new input; the first
    # response's instructions are not carried over, as in OpenAI's API.
    info = model_info(TEST_MODEL_NAME, demo_model_dir)
    expected = info.chat_prompt_ids(
        [
            {"role": "user", "content": "What is a river?"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And a lake?"},
        ]
    )
    assert second.usage is not None and second.usage.input_tokens == len(expected)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=TEST_MODEL_NAME, input="x", previous_response_id="resp_" + "0" * 32)
    assert missing.value.param == "previous_response_id"


def test_stream_events_and_replay_from_any_sequence_number(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=TEST_MODEL_NAME, input="Hi", max_output_tokens=10, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    response_id = events[0].response.id  # type: ignore[union-attr]
    assert deltas == client.responses.retrieve(response_id).output_text
    # After the job finished: the events after any sequence number, exactly.
    replay = list(client.responses.retrieve(response_id, stream=True, starting_after=5))
    assert [(e.sequence_number, e.type) for e in replay] == [(e.sequence_number, e.type) for e in events[6:]]
    # The SDK's own stream helper, and its snapshot.
    with client.responses.stream(
        model=TEST_MODEL_NAME, input="Hi", max_output_tokens=10, temperature=0
    ) as stream:
        last = [event for event in stream][-1]
        # The helper keeps a final response only for response.completed; a run that hit
        # max_output_tokens ends with response.incomplete, whose event carries the response.
        final = stream.get_final_response() if last.type == "response.completed" else last.response  # type: ignore[union-attr]
    assert last.type == kinds[-1]
    assert final.output_text == deltas  # greedy: the same text


def test_background_survives_the_client_and_resumes_after_a_dropped_connection(
    live: Live, client: openai.OpenAI, api_user: ApiUser
) -> None:
    body = {
        "model": TEST_MODEL_NAME,
        "input": "Once upon a time",
        "max_output_tokens": 200,
        "temperature": 0,
        "ignore_eos": True,
        "background": True,
        "stream": True,
    }
    seen: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{live.base_url}/v1/responses", json=body, headers=api_user.headers, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line.removeprefix("data: ")))
                if sum(e["type"] == "response.output_text.delta" for e in seen) >= 5:
                    break  # the connection drops here
    response_id = seen[0]["response"]["id"]
    # A refresh: the rest of the events, after the last one seen, with no gap and no repeat.
    rest = list(
        client.responses.retrieve(response_id, stream=True, starting_after=seen[-1]["sequence_number"])
    )
    assert rest[0].sequence_number == seen[-1]["sequence_number"] + 1
    assert rest[-1].type == "response.incomplete"  # stopped at max_output_tokens
    text = "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta") + "".join(
        e.delta for e in rest if e.type == "response.output_text.delta"
    )
    job = job_of(response_id)
    assert job.status == JobStatus.SUCCEEDED and job.completion_tokens == 200
    assert text == job.output_text


def test_background_cancel_and_delete(client: openai.OpenAI) -> None:
    started = client.responses.create(
        model=TEST_MODEL_NAME,
        input="Once",
        max_output_tokens=480,
        temperature=0,
        background=True,
        extra_body={"ignore_eos": True},
    )
    assert started.status in ("queued", "in_progress") and started.background is True
    wait_until(
        lambda: job_of(started.id).status == JobStatus.RUNNING, timeout=30, what="the response to start"
    )
    cancelled = client.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert job_of(started.id).completion_tokens < 480  # type: ignore[operator]
    events = list(client.responses.retrieve(started.id, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"
    client.responses.delete(started.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(started.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(started.id)
    assert job_of(started.id).deleted_at is not None  # kept for usage and audit, hidden from its owner


def test_store_false_is_not_retrievable(client: openai.OpenAI) -> None:
    response = client.responses.create(model=TEST_MODEL_NAME, input="Hi", max_output_tokens=3, store=False)
    assert response.status in ("completed", "incomplete")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=TEST_MODEL_NAME, input="Hi", background=True, store=False)
    assert bad.value.param == "background"


def test_responses_pass_admission(live: Live, make_api_user: Any) -> None:
    user = make_api_user()
    policy = RateLimitPolicy.objects.create(
        name="resp-once", requests_per_minute=1, burst=1, max_queue_wait_s=0
    )
    UserRateLimit.objects.create(user=user.user, policy=policy)
    sdk = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=user.key, max_retries=0)
    sdk.responses.create(model=TEST_MODEL_NAME, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.responses.create(model=TEST_MODEL_NAME, input="Hi", max_output_tokens=2)
    assert limited.value.response.headers["Retry-After"]
    with pytest.raises(openai.BadRequestError) as unsupported:
        sdk.responses.create(model=TEST_MODEL_NAME, input="Hi", tools=[{"type": "web_search"}])
    assert unsupported.value.code == "unsupported_parameter"


KILL_NAME = "responses-kill"


def _serving(name: str) -> bool:
    client = get_redis()
    for key in client.scan_iter(match="sluice:worker:*"):
        raw = client.get(key)
        if raw and KILL_NAME in json.loads(raw).get("models", []) and name in json.loads(raw)["name"]:
            return True
    return False


@pytest.fixture
def kill_version(live: Live, demo_model_dir: Path, transactional_db: None) -> Iterator[ModelVersion]:
    version = ModelVersion.objects.create(
        served_name=KILL_NAME, label="v1", path=str(demo_model_dir), status="stable"
    )
    yield version
    ModelVersion.objects.filter(pk=version.pk).delete()


def test_a_dead_workers_response_continues(
    live: Live,
    client: openai.OpenAI,
    kill_version: ModelVersion,
    test_database_url: str,
    demo_model_dir: Path,
    tmp_path: Path,
) -> None:
    env = child_env(test_database_url, demo_model_dir, SLUICE_WORKER_MODELS=KILL_NAME)
    doomed: ServerProcess = worker_process(env, model=KILL_NAME, name="resp-doomed", log_dir=tmp_path).start()
    rescuer: ServerProcess | None = None
    try:
        wait_until(lambda: _serving("resp-doomed"), timeout=90, what="the first worker")
        response = client.responses.create(
            model=KILL_NAME,
            input="Once upon a time",
            max_output_tokens=300,
            temperature=0,
            background=True,
            extra_body={"ignore_eos": True},
        )
        job_id = str(job_of(response.id).id)
        wait_until(
            lambda: len(get_streams().progress(job_id).token_ids) >= 10,
            timeout=60,
            interval=0.005,
            what="the response to be generating",
        )
        doomed.kill()
        rescuer = worker_process(env, model=KILL_NAME, name="resp-rescuer", log_dir=tmp_path).start()
        wait_until(
            lambda: Job.objects.get(id=job_id).is_terminal, timeout=120, interval=0.2, what="the rescue"
        )
        job = Job.objects.get(id=job_id)
        assert job.status == JobStatus.SUCCEEDED and job.attempts == 2 and job.completion_tokens == 300
        events = list(client.responses.retrieve(response.id, stream=True))
        assert [e.sequence_number for e in events] == list(range(len(events)))
        kinds = [e.type for e in events]
        assert kinds.count("response.in_progress") == 1 and kinds[-1] == "response.incomplete"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == job.output_text == client.responses.retrieve(response.id).output_text
        # The same greedy answer as an uninterrupted run: resumed, not restarted.
        whole = client.responses.create(
            model=KILL_NAME,
            input="Once upon a time",
            max_output_tokens=300,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert whole.output_text == text
    finally:
        doomed.kill()
        if rescuer is not None:
            rescuer.stop()
