"""OpenAI Embeddings API on the embeddings worker, driven by the unmodified `openai` SDK."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from tokenizers import Tokenizer

from gateway.models import RateLimitPolicy, UserRateLimit
from tests.conftest import ApiUser, Live

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(live: Live, api_user: ApiUser) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0, timeout=60)


def tokens(text: str) -> list[int]:
    tokenizer = Tokenizer.from_file(f"{settings.SLUICE_EMBEDDING_MODEL_PATH}/tokenizer.json")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return list(tokenizer.encode(text, add_special_tokens=True).ids)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_embeddings_of_strings_and_token_ids(client: openai.OpenAI) -> None:
    name = settings.SLUICE_EMBEDDING_MODEL_NAME
    assert name in [m.id for m in client.models.list()]
    texts = ["Rivers flow to the sea.", "A river runs into the ocean.", "Quarterly tax filing deadlines."]
    # The SDK asks for base64 by default (and decodes it); float must give the same vectors.
    encoded = client.embeddings.create(model=name, input=texts)
    plain = client.embeddings.create(model=name, input=texts, encoding_format="float")
    assert [d.index for d in encoded.data] == [0, 1, 2]
    assert all(len(d.embedding) == 384 for d in encoded.data)
    for a, b in zip(encoded.data, plain.data, strict=True):
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-6
    # Exact usage: the tokens the model reads.
    assert encoded.usage.prompt_tokens == sum(len(tokens(t)) for t in texts) == encoded.usage.total_tokens
    close, far = (
        cosine(plain.data[0].embedding, plain.data[1].embedding),
        cosine(plain.data[0].embedding, plain.data[2].embedding),
    )
    assert close > far
    # Token ids of the embedding model's tokenizer mean the same text.
    by_ids = client.embeddings.create(model=name, input=[tokens(texts[0])], encoding_format="float")
    assert cosine(by_ids.data[0].embedding, plain.data[0].embedding) > 0.9999
    assert by_ids.usage.prompt_tokens == len(tokens(texts[0]))


def test_embedding_errors(live: Live, client: openai.OpenAI, api_user: ApiUser) -> None:
    name = settings.SLUICE_EMBEDDING_MODEL_NAME
    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model=name, input="x", dimensions=128)
    assert dims.value.param == "dimensions"
    assert client.embeddings.create(model=name, input="x", dimensions=384).data  # equal: fine
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model=name, input="")
    assert empty.value.param == "input"
    bad: list[Any] = [{"model": name, "input": [1.5]}, {"model": name, "input": "a\u0000b"}, {"model": name}]
    for body in bad:
        response = httpx.post(f"{live.base_url}/v1/embeddings", json=body, headers=api_user.headers)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_embeddings_are_admitted_by_the_token_bucket(live: Live, make_api_user: Any) -> None:
    user = make_api_user()
    policy = RateLimitPolicy.objects.create(
        name="embed-small", tokens_per_minute=30, burst=1, max_queue_wait_s=0, requests_per_minute=0
    )
    UserRateLimit.objects.create(user=user.user, policy=policy)
    sdk = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=user.key, max_retries=0)
    name = settings.SLUICE_EMBEDDING_MODEL_NAME
    text = "one two three four five six seven eight nine ten"  # 12 tokens with [CLS]/[SEP]
    sdk.embeddings.create(model=name, input=[text, text])  # 24 of 30
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.embeddings.create(model=name, input=text)
    assert limited.value.type == "tokens"
