"""TGI-compatible API, driven by the unmodified `huggingface_hub` clients (`InferenceClient`,
`AsyncInferenceClient`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError, OverloadedError, ValidationError

from inference.models import Job, JobStatus
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(live: Live, api_user: ApiUser) -> InferenceClient:
    # HF_HUB_OFFLINE=1 would make the client refuse even localhost (DESIGN.md §2).
    assert os.environ.get("HF_HUB_OFFLINE") != "1"
    return InferenceClient(base_url=live.base_url, api_key=api_user.key, timeout=60)


def test_text_generation(client: InferenceClient) -> None:
    text = client.text_generation("The river", max_new_tokens=12)
    assert isinstance(text, str) and text
    streamed = list(client.text_generation("The river", max_new_tokens=12, stream=True))
    assert len(streamed) > 1
    assert "".join(streamed) == text  # TGI's default is greedy: same text both ways


def test_text_generation_details(client: InferenceClient) -> None:
    output = client.text_generation("The river", max_new_tokens=8, details=True)
    assert output.details is not None
    assert output.details.finish_reason in ("length", "eos_token")
    assert output.details.generated_tokens == len(output.details.tokens)
    assert "".join(t.text for t in output.details.tokens) == output.generated_text
    assert all(t.logprob <= 0 for t in output.details.tokens)
    events = list(client.text_generation("The river", max_new_tokens=8, details=True, stream=True))
    assert [e.token.id for e in events] == [t.id for t in output.details.tokens]
    assert events[-1].generated_text == output.generated_text
    assert (
        events[-1].details is not None
        and events[-1].details.generated_tokens == output.details.generated_tokens
    )
    assert all(e.generated_text is None for e in events[:-1])


def test_stop_sequences_and_full_text(client: InferenceClient) -> None:
    text = client.text_generation("The river", max_new_tokens=30)
    stop = text[5:8]
    out = client.text_generation("The river", max_new_tokens=30, stop=[stop], details=True)
    # TGI keeps the stop sequence in the text (OpenAI routes drop it).
    assert out.generated_text == text[: text.index(stop) + len(stop)]
    assert out.details is not None and out.details.finish_reason == "stop_sequence"
    full = client.text_generation("The river", max_new_tokens=30, return_full_text=True)
    assert full == "The river" + text


def test_sampling_with_seed(client: InferenceClient) -> None:
    one = client.text_generation("The river", max_new_tokens=16, do_sample=True, temperature=1.3, seed=11)
    two = client.text_generation("The river", max_new_tokens=16, do_sample=True, temperature=1.3, seed=11)
    assert one == two


def test_chat_completion(client: InferenceClient, api_user: ApiUser) -> None:
    messages = [{"role": "user", "content": "What is a queue?"}]
    response = client.chat_completion(messages, max_tokens=12, temperature=0)
    content = response.choices[0].message.content
    assert content
    assert response.usage.completion_tokens <= 12
    chunks = list(client.chat_completion(messages, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    job = Job.objects.filter(user=api_user.user, source="openai.chat").latest("queued_at")
    assert job.status == JobStatus.SUCCEEDED


def test_validation_error_is_422(client: InferenceClient) -> None:
    with pytest.raises(ValidationError) as error:
        client.text_generation("The river", max_new_tokens=12, top_p=1.5)
    cause = error.value.__cause__
    assert isinstance(cause, HfHubHTTPError)
    assert cause.response is not None and cause.response.status_code == 422


def test_decoder_input_details_top_n_tokens_and_truncate(
    client: InferenceClient, demo_model_dir: Path
) -> None:
    from inference.prompts import model_info

    prompt = "The river runs to the sea"
    prompt_ids = model_info("x", demo_model_dir).completion_prompt_ids(prompt)
    output = client.text_generation(
        prompt, max_new_tokens=5, details=True, decoder_input_details=True, top_n_tokens=3
    )
    assert output.details is not None
    prefill = output.details.prefill
    assert [t.id for t in prefill] == prompt_ids
    assert prefill[0].logprob is None and all(t.logprob is not None and t.logprob <= 0 for t in prefill[1:])
    assert output.details.top_tokens is not None and len(output.details.top_tokens) == len(
        output.details.tokens
    )
    for token, alternatives in zip(output.details.tokens, output.details.top_tokens, strict=True):
        assert len(alternatives) == 3
        assert alternatives[0]["id"] == token.id  # greedy: the best alternative is the token
    # truncate keeps the end of the prompt, as TGI does: the prefill shows what the model saw.
    cut = client.text_generation(
        prompt, max_new_tokens=3, details=True, decoder_input_details=True, truncate=3
    )
    assert cut.details is not None and [t.id for t in cut.details.prefill] == prompt_ids[-3:]


def test_seed_is_reported_and_stream_details_have_input_length(client: InferenceClient) -> None:
    sampled = client.text_generation("The river", max_new_tokens=6, do_sample=True, details=True)
    assert sampled.details is not None and isinstance(sampled.details.seed, int)
    again = client.text_generation(
        "The river", max_new_tokens=6, do_sample=True, details=True, seed=sampled.details.seed
    )
    assert again.generated_text == sampled.generated_text  # the reported seed is the one used
    greedy = client.text_generation("The river", max_new_tokens=4, details=True)
    assert greedy.details is not None and greedy.details.seed is None
    events = list(client.text_generation("The river", max_new_tokens=4, details=True, stream=True))
    final = events[-1].details
    assert final is not None and final.input_length == 2  # "The river": two tokens of the demo tokenizer


def test_info_and_health(live: Live, api_user: ApiUser) -> None:
    info = httpx.get(f"{live.base_url}/info").json()
    for field in (
        "model_id",
        "model_pipeline_tag",
        "max_concurrent_requests",
        "max_best_of",
        "max_stop_sequences",
        "max_input_tokens",
        "max_total_tokens",
        "validation_workers",
        "max_client_batch_size",
        "router",
        "version",
    ):
        assert field in info, field
    assert info["max_input_tokens"] < info["max_total_tokens"]
    assert InferenceClient(live.base_url, provider="hf-inference", api_key=api_user.key).health_check()
    assert httpx.get(f"{live.base_url}/health").status_code == 200


async def test_async_inference_client(live: Live, api_user: ApiUser) -> None:
    client = AsyncInferenceClient(base_url=live.base_url, api_key=api_user.key, timeout=60)
    assert await AsyncInferenceClient(
        live.base_url, provider="hf-inference", api_key=api_user.key
    ).health_check()
    output = await client.text_generation("The river", max_new_tokens=6, details=True)
    assert output.details is not None and output.details.generated_tokens == len(output.details.tokens)
    events = [
        event
        async for event in await client.text_generation(
            "The river", max_new_tokens=6, details=True, stream=True
        )
    ]
    assert "".join(e.token.text for e in events) == output.generated_text
    assert events[-1].details is not None and events[-1].details.finish_reason == output.details.finish_reason
    chat = await client.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4)
    assert chat.choices[0].message.content
    # 4xx from a TGI route: the client's own error classes, not a crash.
    with pytest.raises(ValidationError):
        await client.text_generation("The river", max_new_tokens=10**7)
    with pytest.raises(HfHubHTTPError) as unauthorized:
        await AsyncInferenceClient(base_url=live.base_url, api_key="sk-sl-nope").text_generation(
            "x", max_new_tokens=2
        )
    assert unauthorized.value.response is not None and unauthorized.value.response.status_code == 401


def test_overloaded_is_the_clients_overloaded_error(live: Live, make_api_user: Any) -> None:
    from gateway.models import RateLimitPolicy, UserRateLimit

    user = make_api_user()
    policy = RateLimitPolicy.objects.create(
        name="one-a-minute", requests_per_minute=1, burst=1, max_queue_wait_s=0
    )
    UserRateLimit.objects.create(user=user.user, policy=policy)
    limited = InferenceClient(base_url=live.base_url, api_key=user.key, timeout=30)
    limited.text_generation("The river", max_new_tokens=2)
    with pytest.raises(OverloadedError):
        limited.text_generation("The river", max_new_tokens=2)
