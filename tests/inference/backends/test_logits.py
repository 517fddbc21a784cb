"""Logits processing in the batched step (penalties, bias, min_tokens, min_p, typical_p),
each against a reference computed here row by row, beside rows that ask for nothing."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from inference.backends.logits import LogitsProcessors
from inference.backends.sampling import sample_rows
from inference.backends.torch_local import TorchCausalLMBackend
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams

VOCAB = 40


def reference(
    logits: list[float], params: SamplingParams, prompt: list[int], output: list[int], stop_ids: list[int]
) -> list[float]:
    """The formulas as their owners state them, one token at a time."""
    out = list(logits)
    if params.repetition_penalty != 1.0:  # transformers' RepetitionPenaltyLogitsProcessor
        for token in set(prompt) | set(output):
            value = out[token]
            out[token] = value / params.repetition_penalty if value > 0 else value * params.repetition_penalty
    for token in set(output):  # OpenAI: mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence
        count = output.count(token)
        out[token] -= count * params.frequency_penalty + (1.0 if count else 0.0) * params.presence_penalty
    for token, bias in params.logit_bias:
        out[token] += bias
    if params.allowed_token_ids:
        out = [value if token in params.allowed_token_ids else -math.inf for token, value in enumerate(out)]
    if len(output) < params.min_tokens:
        for token in stop_ids:
            out[token] = -math.inf
    return out


def test_processing_matches_the_reference_beside_rows_that_ask_for_nothing() -> None:
    torch.manual_seed(0)
    processors = LogitsProcessors(vocab_size=VOCAB, capacity=8, device=torch.device("cpu"))
    cases = {
        1: (SamplingParams(presence_penalty=0.7, frequency_penalty=0.3), [1, 2, 3], [5, 5, 9]),
        2: (SamplingParams(repetition_penalty=1.8), [4, 6, 6, 7], [8, 12]),
        3: (SamplingParams(logit_bias=((0, -100.0), (11, 5.5)), allowed_token_ids=(0, 7, 11, 20)), [1], []),
        4: (SamplingParams(min_tokens=3, frequency_penalty=-0.5), [2, 2], [13]),
        5: (
            SamplingParams(
                presence_penalty=-1.0, repetition_penalty=0.6, logit_bias=((3, 1.0),), min_tokens=1
            ),
            [3, 3, 30],
            [31],
        ),
    }
    stop_ids = [0, 39]
    slots = {
        row: processors.admit(p, prompt_ids=pr, output_ids=out, stop_ids=stop_ids)
        for row, (p, pr, out) in cases.items()
    }
    assert processors.admit(SamplingParams(), prompt_ids=[1], output_ids=[], stop_ids=stop_ids) is None
    for step in range(4):
        logits = torch.randn(7, VOCAB) * 3
        before = logits.clone()
        rows = sorted(cases)
        processors.apply(logits, rows, [slots[row] for row in rows])  # type: ignore[misc]
        for row in (0, 6):  # no processing asked for: untouched
            assert torch.equal(logits[row], before[row])
        for row, (params, prompt, output) in cases.items():
            expected = torch.tensor(reference(before[row].tolist(), params, prompt, output, stop_ids))
            assert torch.allclose(logits[row], expected, atol=1e-5), (step, row)
        chosen = {row: int(logits[row].argmax()) for row in cases}
        processors.observe([slots[row] for row in rows], [chosen[row] for row in rows])  # type: ignore[misc]
        for row, token in chosen.items():
            cases[row][2].append(token)
    for slot in slots.values():
        processors.release(slot)
    assert sorted(processors._free) == list(range(8))


def _frequencies(logits_row: list[float], param: SamplingParams, draws: int = 4000) -> torch.Tensor:
    logits = torch.tensor([logits_row] * draws)
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)]
    tokens = sample_rows(logits, list(range(draws)), [param] * draws, generators)
    assert all(isinstance(t, int) for t in tokens)
    return torch.bincount(torch.tensor(tokens), minlength=len(logits_row)).float() / draws


LOGITS = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]


def test_min_p_keeps_tokens_within_its_fraction_of_the_best() -> None:
    probs = torch.softmax(torch.tensor(LOGITS), dim=-1)
    kept = probs >= 0.3 * probs.max()  # vLLM: p >= min_p * p_max
    got = _frequencies(LOGITS, SamplingParams(temperature=1.0, min_p=0.3))
    assert bool((got[~kept] == 0).all())
    assert torch.allclose(got[kept], probs[kept] / probs[kept].sum(), atol=0.025)


def test_typical_p_keeps_the_tokens_closest_to_the_entropy() -> None:
    # transformers' TypicalLogitsWarper, written out: sort by |surprisal - entropy|, keep until
    # the mass reaches typical_p.
    probs = torch.softmax(torch.tensor(LOGITS), dim=-1)
    entropy = float(-(probs * probs.log()).sum())
    order = sorted(range(len(LOGITS)), key=lambda i: abs(-math.log(probs[i]) - entropy))
    kept, mass = [], 0.0
    for index in order:
        kept.append(index)
        mass += float(probs[index])
        if mass >= 0.5:
            break
    got = _frequencies(LOGITS, SamplingParams(temperature=1.0, typical_p=0.5))
    assert sorted(int(i) for i in got.nonzero()[:, 0]) == sorted(kept)
    expected = probs[kept] / probs[kept].sum()
    assert torch.allclose(got[kept], expected, atol=0.025)


@pytest.fixture(scope="module")
def backend(random_model_dir: Path) -> TorchCausalLMBackend:
    info = ModelInfo("m", random_model_dir)
    return TorchCausalLMBackend(
        random_model_dir, threads=1, max_batch_size=8, eos_token_ids=[4], vocab_decode=info.decode
    )


def _reference_greedy(
    backend: TorchCausalLMBackend, ids: list[int], params: SamplingParams, steps: int
) -> list[int]:
    """transformers' forward, the reference processing, argmax: token by token."""
    output: list[int] = []
    stop_ids = [*params.stop_token_ids, *sorted(backend.eos_token_ids)]
    for _ in range(steps):
        with torch.inference_mode():
            logits = backend.model(torch.tensor([ids + output])).logits[0, -1].float()
        processed = reference(logits.tolist(), params, ids, output, stop_ids)
        output.append(max(range(len(processed)), key=processed.__getitem__))
    return output


def test_the_batched_step_decodes_as_the_reference(backend: TorchCausalLMBackend) -> None:
    """Greedy sequences with each kind of processing, and one with none, in one batch: every
    one gets the tokens of its reference loop."""
    steps = 12
    requests = {
        "plain": SamplingParams(max_tokens=steps, temperature=0.0),
        "penalties": SamplingParams(
            max_tokens=steps, temperature=0.0, presence_penalty=1.5, frequency_penalty=0.8
        ),
        "repetition": SamplingParams(max_tokens=steps, temperature=0.0, repetition_penalty=0.2),
        "bias": SamplingParams(max_tokens=steps, temperature=0.0),  # set below
        "min_tokens": SamplingParams(
            max_tokens=steps, temperature=0.0, min_tokens=5, logit_bias=((4, 50.0),)
        ),
    }
    prompts = {key: [(17 * i + 5 * j) % 1000 + 5 for j in range(6 + 3 * i)] for i, key in enumerate(requests)}
    # Bias away what greedy decoding would say first, and slightly towards two others.
    first_alone = _reference_greedy(backend, prompts["bias"], requests["plain"], 1)[0]
    requests["bias"] = replace(requests["bias"], logit_bias=((9, 0.05), (77, 0.04), (first_alone, -100.0)))
    keys = list(requests)
    first = backend.add(keys, [prompts[k] for k in keys], [requests[k] for k in keys])
    got = {key: [sampled.token_id] for key, sampled in first.items() if not isinstance(sampled, Exception)}
    assert sorted(got) == sorted(keys)
    for _ in range(steps - 1):
        for key, sampled in backend.step().items():
            assert not isinstance(sampled, Exception)
            got[key].append(sampled.token_id)
    backend.remove(keys)
    for key in keys:
        assert got[key] == _reference_greedy(backend, prompts[key], requests[key], steps), key
    # What min_tokens is for, visibly: the (heavily biased) end of sequence held back for
    # exactly min_tokens tokens.
    assert got["min_tokens"][5] == 4 and 4 not in got["min_tokens"][:5]
    assert backend.processors._free and len(backend.processors._free) == backend.processors.capacity
    # Each kind changed what greedy decoding alone would have given (the test would not
    # notice processing that did nothing).
    for key in keys[1:]:
        alone = _reference_greedy(
            backend, prompts[key], SamplingParams(max_tokens=steps, temperature=0.0), steps
        )
        assert got[key] != alone, key
