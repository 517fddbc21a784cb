"""Fused prefill/decode steps and the prefix cache, through the real torch backend.

The tiny random model's near-uniform logits make greedy decoding sensitive to any mistake in
which keys/values a token attends to: a wrong column, position or copied block changes the
tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.backends import kv_cache
from inference.backends.kv_cache import SlotKVCache, StepPlan, decode_attention
from inference.backends.torch_local import TorchCausalLMBackend
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=64, temperature=0.0)


def _backend(model_dir: Path, **kwargs: object) -> TorchCausalLMBackend:
    info = ModelInfo("m", model_dir)
    return TorchCausalLMBackend(
        model_dir,
        dtype="float32",
        threads=1,
        max_batch_size=8,
        eos_token_ids=[],
        vocab_decode=info.decode,
        **kwargs,  # type: ignore[arg-type]
    )


def _prompt(seed: int, length: int) -> list[int]:
    return [(seed * 37 + j * 11) % 1000 + 5 for j in range(length)]


def _alone(backend: TorchCausalLMBackend, key: str, ids: list[int], steps: int) -> list[tuple[int, float]]:
    """The sequence run by itself: one prefill, then one decode per step."""
    out = _alone_keep(backend, key, ids, steps)
    backend.remove([key])
    return out


@pytest.fixture(scope="module")
def fused(random_model_dir: Path) -> TorchCausalLMBackend:
    # A budget of 24 tokens per step: a 90-token prompt takes several steps beside the decodes.
    return _backend(random_model_dir, step_tokens=24)


def test_prefill_chunks_and_decodes_in_one_pass_match_separate_passes(fused: TorchCausalLMBackend) -> None:
    """A and B decode while C's long prompt is prefilled in chunks inside the same forward
    passes: every sequence gets the tokens it gets alone (greedy, float32, exact ids), and A
    and B receive a token on every step of C's prefill (they are never stalled)."""
    prompts = {"a": _prompt(1, 9), "b": _prompt(2, 17), "c": _prompt(3, 90)}
    steps = 20
    expected = {key: _alone(fused, key, ids, steps) for key, ids in prompts.items()}

    got: dict[str, list[tuple[int, float]]] = {key: [] for key in prompts}
    assert fused.enqueue(["a", "b"], [prompts["a"], prompts["b"]], [GREEDY, GREEDY]) == {}
    mixed_steps = 0
    for step in range(60):
        if step == 2:
            assert fused.enqueue(["c"], [prompts["c"]], [GREEDY]) == {}
        results = fused.step()
        running = [key for key in ("a", "b") if len(got[key]) < steps]
        if fused.last_step_prefill and step > 2:
            mixed_steps += 1
            assert fused.last_step_prefill <= 24 - 2  # the budget, less the two decode tokens
            assert set(running) <= set(results), "a decoding sequence was stalled by a prefill"
        for key, sampled in results.items():
            assert not isinstance(sampled, Exception)
            got[key].append((sampled.token_id, sampled.logprob))
        done = [key for key in prompts if len(got[key]) == steps and key in fused.batch_keys]
        fused.remove(done)
        if all(len(got[key]) >= steps for key in prompts):
            break
    assert mixed_steps >= 3  # 90 prompt tokens at <= 22 per step
    assert fused.batch_keys == []
    for key in prompts:
        assert [t for t, _ in got[key]] == [t for t, _ in expected[key]], key
        for (_, lp_got), (_, lp_alone) in zip(got[key], expected[key], strict=True):
            assert lp_got == pytest.approx(lp_alone, abs=1e-5)


def test_steps_are_decode_only_when_nothing_waits(fused: TorchCausalLMBackend) -> None:
    fused.enqueue(["d"], [_prompt(4, 40)], [GREEDY])
    prefill_steps = 0
    while not fused.step():  # no token until the whole prompt is in
        prefill_steps += 1
    assert prefill_steps == 1  # 40 tokens: 24, then 16 and the first token
    for _ in range(5):
        assert "d" in fused.step()
        assert fused.last_step_prefill == 0
    fused.remove(["d"])


def test_a_wave_of_prompts_delays_decodes_by_one_budget_per_step(random_model_dir: Path) -> None:
    backend = _backend(random_model_dir, step_tokens=32)
    backend.add(["run"], [_prompt(5, 8)], [GREEDY])
    wave = [f"w{i}" for i in range(6)]
    backend.enqueue(wave, [_prompt(10 + i, 30) for i in range(6)], [GREEDY] * 6)
    computed = []
    while any(key not in backend.batch_keys or backend._by_key[key].prefilling for key in wave):
        results = backend.step()
        assert "run" in results
        computed.append(backend.last_step_prefill)
    assert max(computed) <= 31 and sum(computed) == 180
    backend.remove(["run", *wave])


@pytest.fixture()
def cached(random_model_dir: Path) -> TorchCausalLMBackend:
    backend = _backend(random_model_dir, prefix_block_size=16, prefix_cache_bytes=0)
    block_bytes = backend.prefix.block_bytes
    # Room for 12 blocks (192 tokens) of prefix cache.
    return _backend(random_model_dir, prefix_block_size=16, prefix_cache_bytes=12 * block_bytes)


def test_a_shared_prefix_is_copied_not_recomputed(
    cached: TorchCausalLMBackend, random_model_dir: Path
) -> None:
    plain = _backend(random_model_dir)
    system = _prompt(7, 50)  # 3 full blocks + 2 tokens
    first, second = [*system, *_prompt(8, 5)], [*system, *_prompt(9, 12)]
    want_first, want_second = _alone(plain, "x", first, 12), _alone(plain, "y", second, 12)

    got_first = _alone_keep(cached, "first", first, 12)
    assert cached.prefix.stats.hit_tokens == 0
    # While "first" runs, "second" starts with the same 48-token (3-block) system prompt.
    got_second = _alone(cached, "second", second, 12)
    assert cached.prefix.stats.hit_tokens == 48
    assert [t for t, _ in got_first] == [t for t, _ in want_first]
    assert [t for t, _ in got_second] == [t for t, _ in want_second]
    for (_, a), (_, b) in zip(got_second, want_second, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    cached.remove(["first"])


def _alone_keep(
    backend: TorchCausalLMBackend, key: str, ids: list[int], steps: int
) -> list[tuple[int, float]]:
    """Like `_alone`, but the sequence stays in the batch afterwards."""
    first = backend.add([key], [ids], [GREEDY])[key]
    assert not isinstance(first, Exception)
    out = [(first.token_id, first.logprob)]
    for _ in range(steps - 1):
        sampled = backend.step()[key]
        assert not isinstance(sampled, Exception)
        out.append((sampled.token_id, sampled.logprob))
    return out


def test_the_next_turn_reuses_the_answer_as_well(
    cached: TorchCausalLMBackend, random_model_dir: Path
) -> None:
    """A finished sequence leaves prompt *and* answer cached: a session's next turn, whose
    prompt is the whole history plus a new message, prefills only the new part."""
    turn1 = _prompt(11, 30)
    answer = [t for t, _ in _alone(cached, "t1", turn1, 40)]  # 30 + 40 = 70 tokens, 69 computed
    turn2 = [*turn1, *answer, *_prompt(12, 10)]
    plain = _backend(random_model_dir)
    want = _alone(plain, "t2", turn2, 10)
    # Another sequence takes turn 1's old row: turn 2's KV can only come from the cache.
    _alone_keep(cached, "filler", _prompt(15, 80), 1)
    got = _alone(cached, "t2", turn2, 10)
    assert cached.prefix.stats.hit_tokens == 64  # 4 blocks of the 69 computed positions
    assert [t for t, _ in got] == [t for t, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    cached.remove(["filler"])


def test_a_shared_block_is_freed_only_when_its_last_user_ends(cached: TorchCausalLMBackend) -> None:
    shared = _prompt(13, 33)  # two full blocks
    cached.add(["u1"], [shared], [GREEDY])
    cached.add(["u2"], [[*shared, 1, 2, 3]], [GREEDY])
    assert cached.prefix.refs(shared) == [2, 2]
    cached.remove(["u1"])
    assert cached.prefix.refs(shared) == [1, 1]  # still held by u2 (u1's own tail block: none)

    # Fill the rest of the cache (12 blocks) many times over: the held blocks must survive.
    for i in range(6):
        other = _prompt(100 + i, 50)
        _alone(cached, f"o{i}", other, 2)
    assert cached.prefix.stats.evicted_blocks > 0
    assert cached.prefix.refs(shared) == [1, 1]
    hits = cached.prefix.stats.hit_tokens
    _alone(cached, "u3", [*shared, 9], 2)  # still a hit
    assert cached.prefix.stats.hit_tokens == hits + 32

    cached.remove(["u2"])
    assert cached.prefix.refs(shared) == [0, 0]  # unreferenced: cached until the space is needed
    for i in range(6):
        _alone(cached, f"p{i}", _prompt(200 + i, 50), 2)
    assert cached.prefix.refs(shared) == []  # evicted
    assert cached.prefix.blocks_used <= cached.prefix.capacity


def test_prompt_logprobs_skip_the_cache_but_stay_exact(cached: TorchCausalLMBackend) -> None:
    ids = _prompt(14, 40)
    _alone(cached, "warm", ids, 2)
    asked = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=0)
    hits = cached.prefix.stats.hit_tokens
    first = cached.add(["lp"], [ids], [asked])["lp"]
    cached.remove(["lp"])
    assert not isinstance(first, Exception) and first.prompt_logprobs is not None
    assert cached.prefix.stats.hit_tokens == hits
    with torch.inference_mode():
        logprobs = torch.log_softmax(cached.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = [logprobs[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert len(first.prompt_logprobs) == len(ids)
    assert all(
        abs(got - want) < 1e-4  # type: ignore[operator]
        for got, want in zip(first.prompt_logprobs[1:], expected, strict=True)
    )


def _run(backend: TorchCausalLMBackend, keys: list[str], steps: int) -> tuple[dict[str, list[int]], int]:
    """Step until every key has ``steps`` tokens: the tokens, and the prompt tokens prefilled."""
    got: dict[str, list[int]] = {key: [] for key in keys}
    prefilled = 0
    for _ in range(steps * 4):
        results = backend.step()
        prefilled += backend.last_step_prefill
        for key, sampled in results.items():
            assert not isinstance(sampled, Exception)
            got[key].append(sampled.token_id)
        done = [key for key in keys if len(got[key]) == steps and key in backend.batch_keys]
        backend.remove(done)
        if all(len(got[key]) >= steps for key in keys):
            break
    return got, prefilled


def test_parallel_samples_prefill_their_prompt_once(fused: TorchCausalLMBackend) -> None:
    """n sequences of one prompt, each with its own seed: the prompt is prefilled once (its
    KV copied to the others, their first tokens drawn from the same logits), and each
    sequence samples exactly what it samples alone with its seed."""
    prompt = _prompt(21, 70)  # 3 chunks at a 24-token budget
    seeds = [11, 12, 13, 14]
    params = [SamplingParams(max_tokens=64, temperature=1.0, seed=seed) for seed in seeds]
    keys = [f"n{i}" for i in range(len(seeds))]
    alone: dict[str, list[int]] = {}
    for key, param in zip(keys, params, strict=True):
        assert fused.enqueue([key], [prompt], [param]) == {}
        tokens, prefilled = _run(fused, [key], 12)
        alone[key] = tokens[key]
        assert prefilled == len(prompt)

    assert fused.enqueue(keys, [prompt] * len(keys), params) == {}
    together, prefilled = _run(fused, keys, 12)
    assert prefilled == len(prompt)  # once, not 4 times
    assert together == alone
    assert len({tuple(tokens) for tokens in together.values()}) == len(keys)  # the seeds differ


def test_a_parallel_sample_outlives_its_leader(fused: TorchCausalLMBackend) -> None:
    """The sequence that prefills for the others is cancelled before its prompt is done: the
    others prefill it themselves and are not stuck."""
    prompt = _prompt(22, 70)
    param = SamplingParams(max_tokens=64, temperature=1.0, seed=5)
    assert fused.enqueue(["solo"], [prompt], [param]) == {}
    expected = _run(fused, ["solo"], 8)[0]["solo"]
    assert fused.enqueue(["lead", "follow"], [prompt, prompt], [param, param]) == {}
    assert fused.step() == {}  # the first chunk of the leader's prompt only
    fused.remove(["lead"])
    assert _run(fused, ["follow"], 8)[0]["follow"] == expected
    assert fused.batch_keys == []


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2)])
def test_decode_attention_matches_scaled_dot_product_attention(heads: int, kv_heads: int) -> None:
    """The batched decode attention against torch's SDPA on the same sliced cache rows: per
    row its own visible columns (a masked tail), grouped-query heads, float32."""
    generator = torch.Generator().manual_seed(0)
    rows, columns, width, head_dim = 5, 40, 23, 16
    keys = torch.randn(rows, kv_heads, columns, head_dim, generator=generator)
    values = torch.randn(rows, kv_heads, columns, head_dim, generator=generator)
    query = torch.randn(rows, heads, 1, head_dim, generator=generator)
    visible = torch.arange(width)[None, :] <= torch.tensor([22, 0, 7, 15, 3])[:, None]
    bias = torch.zeros(rows, width).masked_fill_(~visible, float("-inf"))[:, None, None, :]
    got = decode_attention(query, keys[:, :, :width], values[:, :, :width], bias, 0.3)
    want = torch.nn.functional.scaled_dot_product_attention(
        query,
        keys[:, :, :width],
        values[:, :, :width],
        attn_mask=visible[:, None, None, :],
        scale=0.3,
        enable_gqa=heads != kv_heads,
    )
    assert got.shape == (rows, heads, 1, head_dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Row 1 sees only column 0: its output is that column's value, for every head of a group.
    group = heads // kv_heads
    expected_row1 = values[1, :, 0].repeat_interleave(group, dim=0)
    torch.testing.assert_close(got[1, :, 0], expected_row1, atol=1e-6, rtol=1e-6)


def _plan(dtype: torch.dtype, cols: int, positions: list[int]) -> StepPlan:
    cache = SlotKVCache(
        layers=1, kv_heads=2, head_dim=8, dtype=dtype, device=torch.device("cpu"), rows=4, cols=cols
    )
    plan = StepPlan(cache, decode_rows=list(range(len(positions))), decode_positions=positions)
    plan.prepare(torch.device("cpu"))
    return plan


def test_half_precision_decode_attention_reads_the_whole_capacity_when_that_is_cheaper() -> None:
    """bfloat16: every column while the capacity is at most twice what the rows need (a
    contiguous view, no copy in the GEMM), the slice beyond; float32 and other devices always
    the slice. The bias masks each row's columns past its position either way."""
    full = _plan(torch.bfloat16, 64, [40, 10, 33])
    assert full._bias is not None and full._bias.shape[-1] == 64
    assert torch.isinf(full._bias[1, 0, 0, 11:]).all() and not torch.isinf(full._bias[1, 0, 0, :11]).any()
    assert _plan(torch.bfloat16, 128, [40, 10, 33])._bias.shape[-1] == 41  # type: ignore[union-attr]
    assert _plan(torch.float32, 64, [40, 10, 33])._bias.shape[-1] == 41  # type: ignore[union-attr]
    # Off the CPU (CUDA's strided-batched GEMMs copy nothing) always the slice; the "meta"
    # device stands in for one: the rule reads only the cache's device, dtype and width.
    elsewhere = SlotKVCache(
        layers=1, kv_heads=2, head_dim=8, dtype=torch.bfloat16, device=torch.device("meta"), rows=4, cols=64
    )
    assert StepPlan(elsewhere).attention_width(41) == 41
    assert full.attention_width(41) == 64


def test_decode_attention_over_the_whole_capacity_matches_the_slice_in_bfloat16() -> None:
    generator = torch.Generator().manual_seed(1)
    rows, heads, columns, head_dim = 4, 4, 64, 16
    keys = torch.randn(rows, heads, columns, head_dim, generator=generator).to(torch.bfloat16)
    values = torch.randn(rows, heads, columns, head_dim, generator=generator).to(torch.bfloat16)
    query = torch.randn(rows, heads, 1, head_dim, generator=generator).to(torch.bfloat16)
    positions = [40, 10, 33, 0]
    sliced, full = _plan(torch.bfloat16, 256, positions), _plan(torch.bfloat16, columns, positions)
    assert sliced._bias is not None and full._bias is not None
    width = sliced._bias.shape[-1]
    assert width == 41 and full._bias.shape[-1] == columns
    want = decode_attention(query, keys[:, :, :width], values[:, :, :width], sliced._bias, 0.25)
    got = decode_attention(query, keys, values, full._bias, 0.25)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_a_bfloat16_backend_decodes_the_same_over_the_whole_capacity(
    random_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [_prompt(5, 50), _prompt(6, 70), _prompt(7, 57)]
    keys = ["x", "y", "z"]

    def run() -> list[list[tuple[int, float]]]:
        backend = TorchCausalLMBackend(
            random_model_dir, dtype="bfloat16", threads=1, max_batch_size=4, eos_token_ids=[]
        )
        # Rows need 71+ columns of 128: the whole capacity is read from the first decode on.
        assert backend.cache.col_capacity <= 2.0 * 71
        assert backend.enqueue(keys, prompts, [GREEDY] * 3) == {}
        out: list[list[tuple[int, float]]] = [[] for _ in keys]
        for _ in range(12):
            results = backend.step()
            for i, key in enumerate(keys):
                sampled = results.get(key)
                if sampled is not None:
                    assert not isinstance(sampled, Exception)
                    out[i].append((sampled.token_id, sampled.logprob))
        backend.remove(keys)
        return out

    whole = run()
    monkeypatch.setattr(kv_cache, "FULL_WIDTH_RATIO", 0.0)  # always the slice
    sliced = run()
    for got, want in zip(whole, sliced, strict=True):
        assert len(got) >= 4
        assert [t for t, _ in got[:4]] == [t for t, _ in want[:4]]
        for (_, lp_got), (_, lp_want) in zip(got[:4], want[:4], strict=True):
            assert lp_got == pytest.approx(lp_want, abs=2e-2)
