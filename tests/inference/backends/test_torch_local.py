"""The slot-KV-cache backend against transformers' own `generate` (the reference)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.backends.torch_local import TorchCausalLMBackend
from inference.backends.torch_setup import resolve_dtype
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=64, temperature=0.0)


@pytest.fixture(scope="module")
def backend(random_model_dir: Path) -> TorchCausalLMBackend:
    info = ModelInfo("m", random_model_dir)
    return TorchCausalLMBackend(
        random_model_dir, threads=1, max_batch_size=8, eos_token_ids=[], vocab_decode=info.decode
    )


def reference(backend: TorchCausalLMBackend, ids: list[int], steps: int) -> list[int]:
    out = backend.model.generate(
        torch.tensor([ids]),
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


def test_grouped_query_model_is_loaded(backend: TorchCausalLMBackend) -> None:
    assert backend.kv_heads == 2 and backend.model.config.num_attention_heads == 4
    assert backend.context_length == 256


def test_rows_joining_and_leaving_keep_every_row_exact(backend: TorchCausalLMBackend) -> None:
    """Rows join at different times (right-aligned, shifting the cache when a long prompt
    arrives), leave in the middle (the last row moves into the hole), and the cache compacts
    its dead leading columns; every row must still decode exactly as alone."""
    prompts = {
        f"r{i}": [(13 * i + 5 * j) % 1000 + 5 for j in range(n)] for i, n in enumerate([2, 30, 7, 60, 15, 3])
    }
    steps = {"r0": 40, "r1": 8, "r2": 25, "r3": 30, "r4": 12, "r5": 35}
    got: dict[str, list[int]] = {key: [] for key in prompts}
    join_at = {"r0": 0, "r1": 0, "r2": 3, "r3": 5, "r4": 6, "r5": 20}
    active: set[str] = set()
    for step in range(80):
        joining = [k for k, at in join_at.items() if at == step]
        if joining:
            first = backend.add(joining, [prompts[k] for k in joining], [GREEDY] * len(joining))
            for key, sampled in first.items():
                assert not isinstance(sampled, Exception)
                got[key].append(sampled.token_id)
            active.update(joining)
        finished = [k for k in active if len(got[k]) >= steps[k]]
        backend.remove(finished)
        active.difference_update(finished)
        if not active and step > max(join_at.values()):
            break
        if active:
            for key, sampled in backend.step().items():
                assert not isinstance(sampled, Exception)
                got[key].append(sampled.token_id)
    assert backend.batch_keys == []
    for key, ids in prompts.items():
        assert got[key][: steps[key]] == reference(backend, ids, steps[key]), key


def test_cache_grows_past_its_initial_size(backend: TorchCausalLMBackend) -> None:
    ids = list(range(10, 210))  # 200 prompt tokens + 40 new > the initial 256 columns once padded
    first = backend.add(["long"], [ids], [GREEDY])["long"]
    assert not isinstance(first, Exception)
    tokens = [first.token_id]
    for _ in range(39):
        sampled = backend.step()["long"]
        assert not isinstance(sampled, Exception)
        tokens.append(sampled.token_id)
    backend.remove(["long"])
    assert tokens == reference(backend, ids, 40)


def test_invalid_sequences_are_reported_not_raised(backend: TorchCausalLMBackend) -> None:
    results = backend.add(
        ["ok", "empty", "oov", "huge"],
        [[1, 2, 3], [], [1, 99_999], list(range(1, 300))],
        [GREEDY] * 4,
    )
    assert not isinstance(results["ok"], Exception)
    assert isinstance(results["empty"], ValueError)
    assert "outside the vocabulary" in str(results["oov"])
    assert "context window" in str(results["huge"])
    assert backend.batch_keys == ["ok"]
    backend.remove(["ok"])


def test_logprob_is_the_models_log_probability(backend: TorchCausalLMBackend) -> None:
    ids = [5, 6, 7, 8]
    sampled = backend.add(["lp"], [ids], [GREEDY])["lp"]
    backend.remove(["lp"])
    assert not isinstance(sampled, Exception)
    with torch.inference_mode():
        logits = backend.model(torch.tensor([ids])).logits[0, -1].float()
    expected = torch.log_softmax(logits, -1)[sampled.token_id].item()
    assert sampled.logprob == pytest.approx(expected, abs=1e-4)


def test_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, "bfloat16") is torch.bfloat16
    assert resolve_dtype("auto", cpu, None) is torch.float32
    assert resolve_dtype("float16", cpu) is torch.float16
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype("int3", cpu)


def test_bfloat16_produces_tokens(random_model_dir: Path) -> None:
    info = ModelInfo("m", random_model_dir)
    backend = TorchCausalLMBackend(
        random_model_dir, dtype="bfloat16", threads=1, eos_token_ids=[], vocab_decode=info.decode
    )
    assert backend.description == "cpu/bfloat16"
    first = backend.add(["b"], [[1, 2, 3]], [GREEDY])["b"]
    assert not isinstance(first, Exception)
    assert not isinstance(backend.step()["b"], Exception)


def test_a_full_batch_of_rows_is_allocated_at_load(random_model_dir: Path) -> None:
    """No buffer growth (a copy of the whole cache) when a burst first fills the batch."""
    backend = TorchCausalLMBackend(random_model_dir, threads=1, max_batch_size=24, eos_token_ids=[])
    assert backend.cache.row_capacity == 24
    capacity = backend.cache.keys[0].data_ptr()
    keys = [f"r{i}" for i in range(24)]
    backend.enqueue(keys, [[5 + i, 6, 7] for i in range(24)], [GREEDY] * 24)
    backend.step()
    assert backend.cache.keys[0].data_ptr() == capacity  # the same buffer: nothing re-allocated
    backend.remove(keys)


def test_cache_survives_growth_then_removal_from_the_middle(random_model_dir: Path) -> None:
    """Buffers re-allocated while growing are inference tensors; moving rows into holes must
    still work (a worker once failed here after a batch grew and a middle row finished)."""
    info = ModelInfo("m", random_model_dir)
    backend = TorchCausalLMBackend(
        random_model_dir,
        threads=1,
        max_batch_size=16,
        eos_token_ids=[],
        vocab_decode=info.decode,
        preallocate_rows=False,
    )
    assert backend.cache.row_capacity == 8
    keys = [f"m{i}" for i in range(12)]
    prompts = [[(i * 31 + j) % 900 + 3 for j in range(5 + 10 * i)] for i in range(12)]
    for key, ids in zip(keys, prompts, strict=True):  # one by one: rows and columns grow
        assert not isinstance(backend.add([key], [ids], [GREEDY])[key], Exception)
    assert backend.cache.row_capacity == 16
    backend.step()
    backend.remove(["m1", "m4"])
    results = backend.step()
    assert sorted(results) == sorted(set(keys) - {"m1", "m4"})
    assert not any(isinstance(r, Exception) for r in results.values())
    backend.remove(keys)
    assert backend.batch_keys == []


def _frequencies(logits_row: list[float], param: SamplingParams, draws: int = 4000) -> torch.Tensor:
    from inference.backends.sampling import sample_rows as _sample_rows

    logits = torch.tensor([logits_row] * draws)
    params = [param] * draws
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)]
    tokens = _sample_rows(logits, list(range(draws)), params, generators)
    assert all(isinstance(t, int) for t in tokens)
    return torch.bincount(torch.tensor(tokens), minlength=len(logits_row)).float() / draws


LOGITS = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]


def test_sampler_matches_the_distribution() -> None:
    expected = torch.softmax(torch.tensor(LOGITS) / 0.8, dim=-1)
    got = _frequencies(LOGITS, SamplingParams(temperature=0.8))
    assert torch.allclose(got, expected, atol=0.025), (got, expected)


def test_sampler_top_k_and_top_p_truncate() -> None:
    probs = torch.softmax(torch.tensor(LOGITS), dim=-1)
    top_k = _frequencies(LOGITS, SamplingParams(temperature=1.0, top_k=3))
    assert top_k[3:].sum() == 0
    assert torch.allclose(top_k[:3], probs[:3] / probs[:3].sum(), atol=0.025)
    # The nucleus is the smallest prefix whose mass reaches top_p (here the first 3 tokens).
    cut = float(probs[:2].sum()) + 0.01
    top_p = _frequencies(LOGITS, SamplingParams(temperature=1.0, top_p=cut))
    assert top_p[3:].sum() == 0 and top_p[2] > 0


def test_sampler_reports_invalid_rows() -> None:
    from inference.backends.sampling import sample_rows as _sample_rows

    logits = torch.tensor([LOGITS, [float("nan")] * len(LOGITS)])
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    params = [SamplingParams(temperature=1.0), SamplingParams(temperature=1.0)]
    good, bad = _sample_rows(logits, [0, 1], params, generators)
    assert isinstance(good, int) and isinstance(bad, ValueError)


def test_top_logprobs_are_the_models_best_alternatives(backend: TorchCausalLMBackend) -> None:
    ids = [5, 17, 99, 3, 250]
    wanted = SamplingParams(max_tokens=4, temperature=0.0, top_logprobs=5)
    first = backend.add(["top"], [ids], [wanted])["top"]
    backend.remove(["top"])
    assert not isinstance(first, Exception)
    with torch.inference_mode():
        logits = backend.model(torch.tensor([ids])).logits[0, -1].float()
    expected = torch.topk(torch.log_softmax(logits, dim=-1), 5)
    assert [i for i, _ in first.top] == expected.indices.tolist()
    assert all(abs(lp - e) < 1e-4 for (_, lp), e in zip(first.top, expected.values.tolist(), strict=True))
    assert first.top[0][0] == first.token_id  # greedy
    plain = backend.add(["plain"], [ids], [GREEDY])["plain"]
    backend.remove(["plain"])
    assert not isinstance(plain, Exception) and plain.top == ()


def test_prompt_logprobs_match_a_full_forward_pass(backend: TorchCausalLMBackend) -> None:
    """decoder_input_details: each prompt token's log-probability given the ones before it,
    while other sequences in the same add() keep their usual (last-position) prefill."""
    ids = [7, 300, 12, 45, 901, 2, 64]
    other = [9, 8, 7]
    results = backend.add(
        ["details", "other"],
        [ids, other],
        [SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=0), GREEDY],
    )
    backend.remove(["details", "other"])
    details, plain = results["details"], results["other"]
    assert not isinstance(details, Exception) and not isinstance(plain, Exception)
    assert plain.prompt_logprobs is None
    with torch.inference_mode():
        logprobs = torch.log_softmax(backend.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = [None] + [logprobs[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert details.prompt_logprobs is not None and details.prompt_logprobs[0] is None
    assert all(
        abs(got - want) < 1e-4  # type: ignore[operator]
        for got, want in zip(details.prompt_logprobs[1:], expected[1:], strict=True)
    )
    assert details.token_id == int(logprobs[-1].argmax())
