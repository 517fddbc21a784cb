"""Every sampling control and vLLM extension through the live server with the openai SDK,
each checked for its effect (not just for a 200): penalties and bias against the greedy run,
min_tokens, stop_token_ids, echo, prompt_logprobs, return_token_ids, continuous usage, prompt
truncation, best_of; and the logprobs defects (logprobs=0, special tokens, offsets)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from inference.models import Job
from inference.prompts import model_info
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live

pytestmark = pytest.mark.e2e

PROMPT = "The river"


@pytest.fixture
def client(live: Live, api_user: ApiUser) -> Any:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_user.key, max_retries=0, timeout=120)


def complete(client: Any, **kwargs: Any) -> Any:
    body: dict[str, Any] = {"model": TEST_MODEL_NAME, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    extra = {
        key: kwargs.pop(key)
        for key in list(kwargs)
        if key
        not in (
            "max_tokens",
            "logprobs",
            "echo",
            "best_of",
            "n",
            "temperature",
            "seed",
            "stream",
            "stream_options",
            "prompt",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
        )
    }
    return client.completions.create(**{**body, **kwargs}, extra_body=extra or None)


def ids_of(client: Any, **kwargs: Any) -> list[int]:
    response = complete(client, return_token_ids=True, **kwargs)
    return list(response.choices[0].token_ids)


def test_bias_penalties_and_allowed_ids_change_the_greedy_answer(client: Any) -> None:
    greedy = ids_of(client)
    assert len(greedy) == 8
    banned = ids_of(client, logit_bias={str(greedy[0]): -100})
    assert banned[0] != greedy[0]
    forced = ids_of(client, logit_bias={"300": 100})
    assert forced == [300] * 8
    allowed = ids_of(client, allowed_token_ids=[300, 301, 302])
    assert set(allowed) <= {300, 301, 302}
    # A strong presence penalty: no token repeats in a greedy run of 8 (frequency likewise).
    for name in ("presence_penalty", "frequency_penalty"):
        spread = ids_of(client, **{name: 2.0}, max_tokens=8)
        assert len(set(spread)) == len(spread), name
    repeated = ids_of(client, repetition_penalty=0.05, max_tokens=8)  # below 1: repeats favoured
    assert repeated != greedy


def test_min_tokens_and_stop_token_ids(client: Any) -> None:
    info = model_info(TEST_MODEL_NAME, client_model_dir())
    end = sorted(info.eos_token_ids)[0]
    # Biased towards its end of sequence, it ends at once; min_tokens holds the end back.
    assert ids_of(client, logit_bias={str(end): 100}, max_tokens=8) == [end]
    held = ids_of(client, logit_bias={str(end): 100}, min_tokens=5, max_tokens=8)
    assert len(held) == 6 and end not in held[:5] and held[5] == end
    greedy = ids_of(client, max_tokens=8)
    stop = ids_of(client, stop_token_ids=[greedy[3]], max_tokens=8)
    assert stop == greedy[: greedy.index(greedy[3]) + 1]


def client_model_dir() -> Any:
    from django.conf import settings

    return settings.SLUICE_MODEL_PATH


def test_logprobs_zero_and_every_generated_token(client: Any) -> None:
    """OpenAI's completions: ``logprobs=0`` lists the sampled token itself (up to logprobs+1);
    with ignore_eos every generated token has its entry, special ones marked, and every
    text_offset points inside the text."""
    response = complete(client, logprobs=0, max_tokens=6)
    logprobs = response.choices[0].logprobs
    assert [len(top) for top in logprobs.top_logprobs] == [1] * 6
    assert [next(iter(top)) for top in logprobs.top_logprobs] == logprobs.tokens
    info = model_info(TEST_MODEL_NAME, client_model_dir())
    end = sorted(info.eos_token_ids)[0]
    forced = complete(client, logprobs=2, max_tokens=5, ignore_eos=True, logit_bias={str(end): 100})
    choice = forced.choices[0]
    assert forced.usage.completion_tokens == 5 == len(choice.logprobs.tokens)
    assert all(0 <= offset <= len(choice.text) for offset in choice.logprobs.text_offset)
    chat = client.chat.completions.create(
        model=TEST_MODEL_NAME,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        extra_body={"ignore_eos": True, "logit_bias": {str(end): 100}},
    )
    content = chat.choices[0].logprobs.content
    assert chat.usage is not None and len(content or []) == chat.usage.completion_tokens == 5
    assert all(item.model_extra.get("special") for item in content or [])


def test_echo_prompt_logprobs_and_token_ids(client: Any) -> None:
    plain = complete(client, max_tokens=4)
    echoed = complete(client, max_tokens=4, echo=True, logprobs=1)
    choice = echoed.choices[0]
    assert choice.text == PROMPT + plain.choices[0].text
    prompt_ids = model_info(TEST_MODEL_NAME, client_model_dir()).completion_prompt_ids(PROMPT)
    assert len(choice.logprobs.tokens) == len(prompt_ids) + 4
    assert choice.logprobs.token_logprobs[0] is None and all(
        lp is not None for lp in choice.logprobs.token_logprobs[1:]
    )
    with_ids = complete(client, max_tokens=4, return_token_ids=True, prompt_logprobs=2)
    extra = with_ids.choices[0].model_extra
    assert extra["prompt_token_ids"] == prompt_ids
    assert len(extra["token_ids"]) == 4
    prompt_logprobs = extra["prompt_logprobs"]
    assert prompt_logprobs[0] is None and len(prompt_logprobs) == len(prompt_ids)
    for position, entry in enumerate(prompt_logprobs[1:], start=1):
        actual = entry[str(prompt_ids[position])]
        assert actual["rank"] >= 1 and actual["logprob"] <= 0
        assert 1 <= len(entry) <= 3  # the token and its 2 best alternatives


def test_streams_with_continuous_usage_and_token_ids(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TEST_MODEL_NAME,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"return_token_ids": True, "ignore_eos": True},
        )
    )
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) >= 6
    completions = [c.usage.completion_tokens for c in with_usage if c.choices]
    assert completions == sorted(completions) and completions[-1] == 6
    ids = [i for c in chunks if c.choices for i in (c.choices[0].model_extra or {}).get("token_ids") or []]
    assert len(ids) == 6
    assert any((c.model_extra or {}).get("prompt_token_ids") for c in chunks)


def test_truncate_prompt_tokens_and_best_of(client: Any, api_user: ApiUser) -> None:
    long_prompt = "The river runs to the sea and the sea " * 20
    truncated = complete(client, prompt=long_prompt, truncate_prompt_tokens=12, max_tokens=2)
    assert truncated.usage.prompt_tokens == 12
    best = client.completions.create(
        model=TEST_MODEL_NAME, prompt=PROMPT, max_tokens=6, best_of=4, n=2, temperature=1.0, seed=3
    )
    assert [c.index for c in best.choices] == [0, 1]
    jobs = Job.objects.filter(user=api_user.user, source="openai.completions").order_by("-queued_at")[:4]
    assert len(jobs) == 4  # four sampled, the two likeliest answered
    assert best.usage.completion_tokens == sum(j.completion_tokens or 0 for j in jobs)
