"""OpenAI-compatible API through a live server, driven by the unmodified `openai` SDK."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from config.processes import wait_until
from inference.models import Job, JobStatus
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about rivers."}]


@pytest.fixture
def client(live: Live, api_user: ApiUser) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0, timeout=60)


def test_chat_completion(client: openai.OpenAI, api_user: ApiUser) -> None:
    response = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=0
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    job = Job.objects.get(id=response.id.removeprefix("chatcmpl-"))
    assert job.user == api_user.user
    assert job.status == JobStatus.SUCCEEDED
    assert job.output_text == choice.message.content
    assert job.started_at and job.first_token_at and job.finished_at
    assert job.queued_at <= job.started_at <= job.first_token_at <= job.finished_at


def test_chat_completion_stream_matches_non_stream(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=20, temperature=0
    )
    stream = client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=QUESTION,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one blob
    assert text == whole.choices[0].message.content  # greedy: the same answer either way
    assert finish == [whole.choices[0].finish_reason]
    assert len(usage) == 1 and usage[0].completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_text_completion(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=10, temperature=0
    )
    assert response.object == "text_completion"
    assert response.choices[0].text
    streamed = client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == response.choices[0].text


def test_stop_sequence(client: openai.OpenAI) -> None:
    full = client.completions.create(model=TEST_MODEL_NAME, prompt="The river", max_tokens=30, temperature=0)
    text = full.choices[0].text
    stop = text[8:11]
    cut = client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=30, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        r = client.chat.completions.create(
            model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=16, temperature=1.2, seed=seed
        )
        return r.choices[0].message.content or ""

    assert ask(7) == ask(7)


def test_models(client: openai.OpenAI) -> None:
    from django.conf import settings

    assert [m.id for m in client.models.list()] == [TEST_MODEL_NAME, settings.SLUICE_EMBEDDING_MODEL_NAME]
    assert client.models.retrieve(TEST_MODEL_NAME).id == TEST_MODEL_NAME
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"


def test_sdk_raises_on_errors(live: Live, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=10**9)
    assert bad.value.param == "max_tokens"
    wrong_key = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="sk-sl-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.models.list()


def test_client_disconnect_cancels_generation(live: Live, api_user: ApiUser) -> None:
    """Closing a streaming request stops its generation. Repeated: a disconnect can land at
    different points of the server's stream loop (once, one in six were missed)."""
    body = {
        "model": TEST_MODEL_NAME,
        "messages": QUESTION,
        "max_tokens": 480,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    for _ in range(8):
        job_id = None
        with (
            httpx.Client(timeout=30) as http,
            http.stream(
                "POST", f"{live.base_url}/v1/chat/completions", json=body, headers=api_user.headers
            ) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                    job_id = line.split('"id":"chatcmpl-')[1].split('"')[0]
                    break
        assert job_id is not None  # left the `with`: the connection is closed mid-stream

        ended = functools.partial(lambda job_id: Job.objects.get(id=job_id).is_terminal, job_id)
        wait_until(ended, timeout=20, interval=0.02, what="the job to end")
        job = Job.objects.get(id=job_id)
        assert job.params["ignore_eos"] is True
        assert job.status == JobStatus.CANCELLED, f"{job.status} after {job.completion_tokens} tokens"
        assert job.finish_reason == "cancelled"
        assert (job.completion_tokens or 0) < 480


def test_concurrent_streams_are_isolated(live: Live, make_api_user: object) -> None:
    """Several users streaming at once each get their own job's text."""
    import concurrent.futures

    users = [make_api_user() for _ in range(4)]  # type: ignore[operator]

    def run(index: int) -> tuple[str, str]:
        sdk = openai.OpenAI(
            base_url=f"{live.base_url}/v1", api_key=users[index].key, max_retries=0, timeout=60
        )
        stream = sdk.completions.create(
            model=TEST_MODEL_NAME, prompt=f"Story {index}:", max_tokens=25, temperature=0, stream=True
        )
        chunks = list(stream)
        return chunks[0].id.removeprefix("cmpl-"), "".join(c.choices[0].text for c in chunks if c.choices)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    assert time.monotonic() - started < 60
    for index, (job_id, text) in enumerate(results):
        job = Job.objects.get(id=job_id)
        assert job.user == users[index].user
        assert job.output_text == text


def test_completions_take_a_batch_of_prompts_and_token_ids(
    client: openai.OpenAI, demo_model_dir: Path
) -> None:
    prompts = ["The river", "A queue", "Once upon"]
    batch = client.completions.create(model=TEST_MODEL_NAME, prompt=prompts, max_tokens=6, temperature=0)
    assert [choice.index for choice in batch.choices] == [0, 1, 2]
    singles = [
        client.completions.create(model=TEST_MODEL_NAME, prompt=p, max_tokens=6, temperature=0)
        for p in prompts
    ]
    assert [c.text for c in batch.choices] == [s.choices[0].text for s in singles]
    assert batch.usage is not None
    assert batch.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles if s.usage)
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles if s.usage)
    # Streamed: chunks of the prompts interleave, each names its prompt by index.
    texts = ["", "", ""]
    usage = []
    for chunk in client.completions.create(
        model=TEST_MODEL_NAME,
        prompt=prompts,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
        if chunk.usage:
            usage.append(chunk.usage)
    assert texts == [c.text for c in batch.choices]
    assert len(usage) == 1 and usage[0].completion_tokens == batch.usage.completion_tokens
    # Token ids of the model's tokenizer are a prompt too (one list, or a list of lists).
    from inference.prompts import model_info

    ids = model_info(TEST_MODEL_NAME, demo_model_dir).completion_prompt_ids("The river")
    by_ids = client.completions.create(model=TEST_MODEL_NAME, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == singles[0].choices[0].text
    two = client.completions.create(model=TEST_MODEL_NAME, prompt=[ids, ids], max_tokens=6, temperature=0)
    assert [c.text for c in two.choices] == [singles[0].choices[0].text] * 2


def test_chat_logprobs_from_the_engine(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    # One entry per generated token; the end-of-sequence token (counted in usage, as vLLM does)
    # has no text and no entry. The tiny test model is trained per machine: it may or may not end so.
    completion = response.usage.completion_tokens  # type: ignore[union-attr]
    ended_by_eos = choice.finish_reason == "stop"
    assert len(content) == (completion - 1 if ended_by_eos else completion) or (
        ended_by_eos and len(content) == completion  # a stop string: every token has an entry
    )
    assert b"".join(bytes(t.bytes or []) for t in content).decode() == choice.message.content
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        assert [t.logprob for t in token.top_logprobs] == sorted(
            (t.logprob for t in token.top_logprobs), reverse=True
        )
        # Greedy: the chosen token is the most likely one.
        assert token.top_logprobs[0].token == token.token
        assert abs(token.top_logprobs[0].logprob - token.logprob) < 1e-3
    streamed = []
    for chunk in client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed += chunk.choices[0].logprobs.content
    assert [(t.token, round(t.logprob, 3)) for t in streamed] == [
        (t.token, round(t.logprob, 3)) for t in content
    ]
    plain = client.chat.completions.create(
        model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=4, temperature=0
    )
    assert plain.choices[0].logprobs is None


def test_completion_logprobs(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=6, temperature=0, logprobs=2
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert len(logprobs.top_logprobs) == len(logprobs.tokens)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]
    streamed: list[str] = []
    for chunk in client.completions.create(
        model=TEST_MODEL_NAME, prompt="The river", max_tokens=6, temperature=0, logprobs=2, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.tokens or []
    assert streamed == logprobs.tokens


def test_protocol_details_real_clients_check(live: Live, client: openai.OpenAI, api_user: ApiUser) -> None:
    # `name: null` on a message (TGI's chat client sends it); system_fingerprint is a string.
    response = client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=[{"role": "user", "content": "Hi", "name": None}],  # type: ignore[list-item,misc]
        max_tokens=3,
    )
    assert isinstance(response.system_fingerprint, str) and response.system_fingerprint
    # stream_options needs stream, as OpenAI says.
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=3, stream_options={"include_usage": True}
        )
    assert bad.value.param == "stream_options" and bad.value.type == "invalid_request_error"
    # A request id: echoed when given, made up when not, and kept on the job.
    raw = client.with_raw_response.chat.completions.create(
        model=TEST_MODEL_NAME, messages=QUESTION, max_tokens=3, extra_headers={"X-Request-Id": "trace-42"}
    )
    assert raw.headers["x-request-id"] == "trace-42"
    job = Job.objects.get(id=raw.parse().id.removeprefix("chatcmpl-"))
    assert job.request_id == "trace-42"
    made_up = httpx.get(f"{live.base_url}/v1/models", headers=api_user.headers)
    assert made_up.headers["x-request-id"].startswith("req_")
    hostile = httpx.get(f"{live.base_url}/v1/models", headers={**api_user.headers, "X-Request-Id": "a b\tc"})
    assert hostile.headers["x-request-id"].startswith("req_")  # not echoed: not a usable id
    # Error types are OpenAI's.
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert missing.value.type == "invalid_request_error"
    wrong_key = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="sk-sl-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        wrong_key.models.list()
    assert unauthorized.value.type == "invalid_request_error" and unauthorized.value.code == "invalid_api_key"


def test_parallel_sampling_gives_n_seeded_choices_and_counts_the_prompt_once(
    client: openai.OpenAI, api_user: ApiUser
) -> None:
    """n choices, each sampled with its own seed (choice i: seed + i, so choice 0 is what
    n=1 gives with the same seed), one job each, placed together on one worker; usage counts
    the shared prompt once; streamed, the chunks name their choice."""
    ask = functools.partial(
        client.chat.completions.create,
        model=TEST_MODEL_NAME,
        messages=QUESTION,
        max_tokens=12,
        temperature=1.2,
    )
    three = ask(n=3, seed=7)
    assert [c.index for c in three.choices] == [0, 1, 2]
    texts = [c.message.content or "" for c in three.choices]
    assert len(set(texts)) >= 2  # three seeds, not one sample three times
    assert texts[0] == (ask(seed=7).choices[0].message.content or "")
    assert texts[1] == (ask(seed=8).choices[0].message.content or "")
    assert [c.message.content for c in ask(n=3, seed=7).choices] == texts  # reproducible
    single = ask(seed=7)
    assert three.usage is not None and single.usage is not None
    assert three.usage.prompt_tokens == single.usage.prompt_tokens
    jobs = list(Job.objects.filter(user=api_user.user, params__seed__in=[7, 8, 9]).order_by("queued_at")[:3])
    assert [job.params.get("choice", 0) for job in jobs] == [0, 1, 2]
    assert three.usage.completion_tokens == sum(job.completion_tokens or 0 for job in jobs)
    assert len({job.routed_worker for job in jobs}) == 1 and jobs[0].routed_worker
    assert {job.affinity for job in jobs} == {"group"}

    streamed = ["", "", ""]
    finished: list[int] = []
    usage = []
    for chunk in client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=QUESTION,
        max_tokens=12,
        temperature=1.2,
        n=3,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    ):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.append(choice.index)
        if chunk.usage:
            usage.append(chunk.usage)
    assert streamed == texts
    assert sorted(finished) == [0, 1, 2]
    assert len(usage) == 1 and usage[0].prompt_tokens == single.usage.prompt_tokens
    assert usage[0].completion_tokens == three.usage.completion_tokens


def test_completions_with_n_order_choices_by_prompt(client: openai.OpenAI) -> None:
    prompts = ["The river", "A queue"]
    ask = functools.partial(client.completions.create, model=TEST_MODEL_NAME, max_tokens=6, temperature=1.0)
    both = ask(prompt=prompts, n=2, seed=3)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    alone = [ask(prompt=p, seed=seed).choices[0].text for p in prompts for seed in (3, 4)]
    assert [c.text for c in both.choices] == alone
    singles = [ask(prompt=p, seed=3) for p in prompts]
    assert both.usage is not None
    assert both.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles if s.usage)
