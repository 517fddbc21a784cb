"""TGI's own Python client, `text_generation` (unchanged), against the live server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.conf import settings
from text_generation import AsyncClient, Client
from text_generation.errors import OverloadedError, ValidationError
from text_generation.types import Message

from gateway.models import RateLimitPolicy, UserRateLimit
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.e2e


def client_for(live: Live, user: ApiUser) -> Client:
    return Client(live.base_url, headers=user.headers, timeout=60)


def test_generate_and_generate_stream(live: Live, api_user: ApiUser) -> None:
    client = client_for(live, api_user)
    response = client.generate("The river", max_new_tokens=8, decoder_input_details=True, top_n_tokens=2)
    assert response.generated_text
    details = response.details
    assert details.generated_tokens == len(details.tokens) == 8
    assert details.prefill and details.prefill[0].logprob is None
    assert details.top_tokens is not None and all(len(top) == 2 for top in details.top_tokens)
    assert "".join(t.text for t in details.tokens) == response.generated_text
    events = list(client.generate_stream("The river", max_new_tokens=8))
    assert "".join(e.token.text for e in events) == response.generated_text
    assert events[-1].generated_text == response.generated_text
    assert events[-1].details is not None and events[-1].details.generated_tokens == 8
    stop = response.generated_text[3:6]
    stopped = client.generate("The river", max_new_tokens=8, stop_sequences=[stop])
    assert stopped.generated_text.endswith(stop) and stopped.details.finish_reason == "stop_sequence"


def test_chat(live: Live, api_user: ApiUser) -> None:
    client = client_for(live, api_user)
    reply = client.chat(messages=[Message(role="user", content="Hi")], max_tokens=5, temperature=0)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert isinstance(reply.system_fingerprint, str)


async def test_async_client(live: Live, api_user: ApiUser) -> None:
    client = AsyncClient(live.base_url, headers=api_user.headers, timeout=60)
    response = await client.generate("The river", max_new_tokens=6)
    assert response.details.generated_tokens == 6
    tokens = [event.token.text async for event in client.generate_stream("The river", max_new_tokens=6)]
    assert "".join(tokens) == response.generated_text
    with pytest.raises(ValidationError):
        await client.generate("The river", max_new_tokens=6, top_p=0.5, temperature=-1)


def test_error_classes(live: Live, make_api_user: object) -> None:
    user = make_api_user()  # type: ignore[operator]
    policy = RateLimitPolicy.objects.create(
        name="tgi-once", requests_per_minute=1, burst=1, max_queue_wait_s=0
    )
    UserRateLimit.objects.create(user=user.user, policy=policy)
    client = client_for(live, user)
    with pytest.raises(ValidationError):  # refused before admission: costs no request
        client.generate("The river", max_new_tokens=10**7)
    with pytest.raises(ValidationError):
        client.generate_stream("The river", max_new_tokens=10**7).__next__()
    client.generate("The river", max_new_tokens=2)
    with pytest.raises(OverloadedError):
        client.generate("The river", max_new_tokens=2)


def test_best_of_answers_with_the_likeliest_sequence(live: Live, api_user: ApiUser) -> None:
    client = client_for(live, api_user)
    response = client.generate("The river", max_new_tokens=8, best_of=3, do_sample=True)
    details = response.details
    others = details.best_of_sequences
    assert others is not None and len(others) == 2
    assert "".join(t.text for t in details.tokens) == response.generated_text

    def score(tokens: list[Any]) -> float:
        return sum(t.logprob for t in tokens)

    assert all(score(details.tokens) >= score(other.tokens) for other in others)
    assert len({details.seed, *(other.seed for other in others)}) == 3  # a seed each
    for other in others:  # sampling may end a sequence on EOS before max_new_tokens
        assert other.generated_tokens == len(other.tokens) <= 8
        if other.generated_tokens < 8:
            assert other.finish_reason == "eos_token" and other.tokens[-1].special
        else:
            assert other.finish_reason == "length"
    # TGI's rules (the client checks some itself: the bodies go as they are).
    for route, parameters, message in (
        ("generate", {"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set"),
        ("generate", {"best_of": 2}, "you must use sampling"),
        ("generate", {"best_of": 99, "do_sample": True}, "`best_of` must be > 0 and <= "),
        ("generate_stream", {"best_of": 2, "do_sample": True}, "`best_of` != 1 is not allowed"),
    ):
        body = {"inputs": "x", "parameters": {"max_new_tokens": 2, **parameters}}
        reply = httpx.post(f"{live.base_url}/{route}", json=body, headers=api_user.headers, timeout=30)
        assert reply.status_code == 422, reply.text
        assert reply.json()["error_type"] == "validation" and message in reply.json()["error"]
    assert httpx.get(f"{live.base_url}/info", timeout=30).json()["max_best_of"] == settings.SLUICE_MAX_N
