"""OpenAI bodies, usage and log-probabilities shaped from job rows (unsaved: the shaping reads
their fields only) and job streams written to the suite's real Valkey as a worker writes them,
on the demo model's real tokenizer (logprob tokens, bytes, specials). No server, no worker.
The helpers here serve test_streaming.py too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.openai.shaping import (
    Logprobs,
    Shape,
    best_of,
    chat_body,
    completion_body,
    created_ts,
    fingerprint,
    finish_reason,
    sluice_extras,
    usage_event,
    usage_of,
    usage_or_zero,
)
from gateway.prepare import PreparedRequest
from inference.jobstream import EntryKind, StreamEntry
from inference.models import Job, JobStatus
from inference.sampling_params import SamplingParams
from inference.store import get_streams
from inference.tools.calls import ToolPlan
from inference.versions.registry import ServedModel
from tests.conftest import TEST_MODEL_NAME

QUEUED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
CREATED = int(QUEUED_AT.timestamp())
EOS = 4  # the demo model's <|end|>
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "model": TEST_MODEL_NAME,
        "kind": "chat",
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "status": JobStatus.SUCCEEDED,
        "finish_reason": "eos",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "queued_at": QUEUED_AT,
        **fields,
    }
    return Job(**values)


def token(
    text: str, ids: list[int], logprobs: list[float] | None = None, *, n: int | None = None, **more: Any
) -> StreamEntry:
    """A step's entry; ``n``: the completion tokens so far (a worker counts them cumulatively)."""
    return StreamEntry.token(
        text=text,
        token_ids=ids,
        logprobs=logprobs or [-0.5] * len(ids),
        completion_tokens=len(ids) if n is None else n,
        **more,
    )


def end(status: str = "succeeded", reason: str = "eos", **more: Any) -> StreamEntry:
    return StreamEntry.end(status=status, finish_reason=reason, usage=more.pop("usage", USAGE), **more)


def write(ids: list[str], job: Job, *entries: StreamEntry) -> None:
    """The job's stream as a worker writes it: queued, then ``entries``."""
    streams = get_streams()
    job_id = str(job.id)
    ids.append(job_id)
    streams.open(job_id)
    for entry in entries:
        if entry.kind == EntryKind.END:
            assert streams.finish(job_id, entry)
        else:
            assert streams.append(job_id, entry)


@pytest.mark.parametrize(
    ("reason", "openai"),
    [
        ("eos", "stop"),
        ("stop_sequence", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("cancelled", "cancelled"),
        ("", None),
    ],
)
def test_finish_reasons_in_openais_words(reason: str, openai: str | None) -> None:
    assert finish_reason(reason) == openai


def test_usage_over_a_requests_jobs_counts_each_prompt_once() -> None:
    first = make_job(prompt_tokens=5, completion_tokens=3)
    second = make_job(prompt_tokens=5, completion_tokens=4, params={"choice": 1})  # shares the prompt
    other_prompt = make_job(prompt_tokens=2, completion_tokens=1)
    not_started = make_job(prompt_tokens=None, completion_tokens=None)
    assert usage_of([first, second, other_prompt, not_started]) == {
        "prompt_tokens": 7,
        "completion_tokens": 8,
        "total_tokens": 15,
    }
    assert usage_or_zero(not_started) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert usage_or_zero(first) == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_fingerprint_created_and_sluices_own_fields(model: ServedModel) -> None:
    assert fingerprint(model) == "fp_sluice_0_default"
    canary = ServedModel(name="m", path=model.path, version_id=12, label="canary-2")
    assert fingerprint(canary) == "fp_sluice_12_canary-2"
    assert len(fingerprint(ServedModel(name="m", path=model.path, version_id=3, label="x" * 100))) == 64
    assert created_ts(make_job()) == CREATED
    assert sluice_extras(make_job()) == {"cache_hit": False}
    session = uuid.uuid4()
    cited = make_job(cache_hit=True, citations=[{"document": "d", "score": 0.5}], session_id=session)
    assert sluice_extras(cited) == {
        "cache_hit": True,
        "citations": [{"document": "d", "score": 0.5}],
        "session_id": str(session),
    }


def test_the_usage_chunk_a_stream_ends_with() -> None:
    assert usage_event(
        "chatcmpl-1", "chat.completion.chunk", created=7, model="m", fingerprint="fp", usage=USAGE
    ) == (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m",'
        b'"system_fingerprint":"fp","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    )


def test_chat_logprobs_carry_text_bytes_alternatives_and_mark_specials(model: ServedModel) -> None:
    entry = token("Hell", [44, 529], [-0.1, -0.2], top_logprobs=[[(44, -0.1), (83, -2.5)], [(529, -0.2)]])
    special = token("", [EOS], [-0.3])
    logprobs = Logprobs(info=model.info, eos=model.info.eos_token_ids, top=1)
    assert logprobs.chat([entry, special]) == {
        "content": [
            {
                "token": "H",
                "logprob": -0.1,
                "bytes": [72],
                "top_logprobs": [{"token": "H", "logprob": -0.1, "bytes": [72]}],
            },
            {
                "token": "ell",
                "logprob": -0.2,
                "bytes": [101, 108, 108],
                "top_logprobs": [{"token": "ell", "logprob": -0.2, "bytes": [101, 108, 108]}],
            },
            {
                "token": "<|end|>",
                "logprob": -0.3,
                "bytes": list(b"<|end|>"),
                "special": True,  # generated and counted, no text
                "top_logprobs": [],
            },
        ],
        "refusal": None,
    }


def test_completion_logprobs_offsets_ids_and_the_sampled_token(model: ServedModel) -> None:
    info = model.info
    entry = token(
        "Hello",
        [44, 529, EOS, 83],
        [-0.1, -0.2, -0.3, -0.4],
        top_logprobs=[*[[(83, -1.0)]] * 3, [(83, -0.4)]],
    )
    legacy = Logprobs(info=info, eos=info.eos_token_ids, top=1, include_sampled=True)
    assert legacy.completion([entry], offset=6) == {
        "tokens": ["H", "ell", "<|end|>", "o"],
        "token_logprobs": [-0.1, -0.2, -0.3, -0.4],
        # The sampled token joins the top alternative (logprobs + 1 at most).
        "top_logprobs": [
            {"o": -1.0, "H": -0.1},
            {"o": -1.0, "ell": -0.2},
            {"o": -1.0, "<|end|>": -0.3},
            {"o": -0.4},
        ],
        "text_offset": [6, 7, 10, 10],  # an end of sequence adds no text
    }
    as_ids = Logprobs(info=info, eos=info.eos_token_ids, top=0, as_ids=True)
    capped = as_ids.completion([token("Hell", [44, 529], [-0.1, -0.2])], offset=6, limit=6)
    assert capped["tokens"] == ["token_id:44", "token_id:529"]
    assert capped["top_logprobs"] == [{}, {}] and capped["text_offset"] == [6, 6]  # never past the text
    assert legacy.prompt([(44, None), (529, -1.5), (83, -0.7)], limit=3) == {
        "tokens": ["H", "ell", "o"],
        "token_logprobs": [None, -1.5, -0.7],
        "top_logprobs": [None, {"ell": -1.5}, {"o": -0.7}],
        "text_offset": [0, 1, 3],  # 4 is past the limit
    }


def test_best_of_answers_the_likeliest_choices_of_each_prompt(written: list[str]) -> None:
    jobs = [make_job() for _ in range(3)]
    for job, logprobs in zip(jobs, ([-1.0, -2.0], [-0.5, -0.25], [-1.0, -0.5]), strict=True):
        write(written, job, token("ab", [10, 11], logprobs), end())
    assert best_of(jobs, n=1, prompts=1) == [jobs[1]]
    assert best_of(jobs, n=2, prompts=1) == [jobs[1], jobs[2]]
    assert best_of(jobs, n=3, prompts=1) == jobs  # as many jobs as choices: in order


def test_a_chat_body_with_logprobs_and_token_ids(model: ServedModel, written: list[str]) -> None:
    job = make_job(output_text="Hello", finish_reason="length", params={"top_logprobs": 0})
    write(
        written, job, StreamEntry.start(1, prompt_ids=[2, 7, 3]), token("Hell", [44, 529]), token("o", [83])
    )
    info = model.info
    shape = Shape(model=model, logprobs=Logprobs(info=info, eos=info.eos_token_ids, top=0), token_ids=True)
    body = chat_body([job], shape=shape)
    choice = body.pop("choices")[0]
    assert body == {
        "id": f"chatcmpl-{job.id.hex}",
        "object": "chat.completion",
        "created": CREATED,
        "model": TEST_MODEL_NAME,
        "system_fingerprint": "fp_sluice_0_default",
        "usage": USAGE,
        "cache_hit": False,
        "prompt_token_ids": [2, 7, 3],
    }
    assert choice["message"] == {"role": "assistant", "content": "Hello", "refusal": None}
    assert (choice["index"], choice["finish_reason"], choice["token_ids"]) == (0, "length", [44, 529, 83])
    assert [item["token"] for item in choice["logprobs"]["content"]] == ["H", "ell", "o"]


def test_a_chat_body_reads_tool_calls_from_the_text(model: ServedModel) -> None:
    text = 'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    job = make_job(output_text=text, finish_reason="eos")
    shape = Shape(model=model, logprobs=None, tools=ToolPlan(tools=(WEATHER,)))
    [choice] = chat_body([job], shape=shape)["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Let me check.",
        "refusal": None,
        "tool_calls": [
            {
                "id": f"call_{job.id.hex[:24]}_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert choice["finish_reason"] == "tool_calls" and choice["logprobs"] is None
    # Without tools, the same text is the answer.
    [plain] = chat_body([job], shape=Shape(model=model, logprobs=None))["choices"]
    assert plain["message"]["content"] == text and plain["finish_reason"] == "stop"


def test_a_completion_body_echoes_each_prompt_before_its_choice(model: ServedModel) -> None:
    text_prompt = make_job(kind="completion", input={"prompt": "Hello"}, output_text=" world")
    ids_prompt = make_job(
        kind="completion", input={"prompt_ids": [44, 529]}, output_text="o", finish_reason="length"
    )
    prompts = [PreparedRequest(model, "completion", {}, SamplingParams(), 3) for _ in range(2)]
    shape = Shape(model=model, logprobs=None, echo=True, prompts=prompts)
    body = completion_body([text_prompt, ids_prompt], shape=shape)
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "Hello world", "stop"),
        (1, "Hello", "length"),  # token ids, decoded
    ]
    assert body["id"] == f"cmpl-{text_prompt.id.hex}" and body["object"] == "text_completion"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
