"""TGI-compatible API, driven by the unmodified `huggingface_hub.InferenceClient`."""

from __future__ import annotations

import os

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError, ValidationError

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
