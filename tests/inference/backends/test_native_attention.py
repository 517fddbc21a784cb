"""The native attention kernel (inference/backends/native/attention.cpp) computes what torch's
SDPA computes: grouped-query heads, rows of different lengths (the columns past a row's length
never read), decode and prefill tokens in one call, float32 and bfloat16; and a backend that
runs it decodes the same greedy tokens as one on torch's batched GEMMs.

``make test`` builds the kernel first (``make install`` does); elsewhere a missing build skips
these tests, naming why — except under CI=true, where it fails them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from config import env
from inference.backends import native
from tests.inference.backends.test_kv_cache import _backend
from tests.inference.backends.test_llama_step import PROMPTS, _run


@pytest.fixture(scope="module")
def kernel() -> native.Kernel:
    loaded = native.kernel(env.native_dir())
    if loaded.module is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the native attention kernel is not available: {loaded.reason}")
        pytest.skip(f"the native attention kernel is not available: {loaded.reason}")
    return loaded


def reference(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: list[int], lengths: list[int]
) -> torch.Tensor:
    """Token by token through SDPA, in float64: each token over its row's first columns."""
    out = []
    for t, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        k = keys[row, :, :length].double()[None]
        v = values[row, :, :length].double()[None]
        q = query[t].double()[None, :, None]  # [1, heads, 1, d]
        out.append(F.scaled_dot_product_attention(q, k, v, enable_gqa=True)[0, :, 0])
    return torch.stack(out)


def attend(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: list[int], lengths: list[int]
) -> torch.Tensor:
    module = native.kernel(env.native_dir()).module
    assert module is not None
    return native.slot_attention(
        module,
        query,
        keys,
        values,
        torch.tensor(rows, dtype=torch.long),
        torch.tensor(lengths, dtype=torch.long),
        query.shape[-1] ** -0.5,
    )


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)]
)
# 48 and 96: head sizes without a register-blocked loop (the generic one runs).
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"),
    [(8, 8, 64), (8, 2, 64), (12, 4, 128), (4, 1, 32), (6, 3, 48), (4, 2, 96)],
)
@pytest.mark.usefixtures("kernel")
def test_decode_tokens_match_sdpa(
    dtype: torch.dtype, tolerance: float, heads: int, kv_heads: int, head_dim: int
) -> None:
    torch.manual_seed(heads * 100 + kv_heads + head_dim)
    keys = torch.randn(6, kv_heads, 96, head_dim).to(dtype)
    values = torch.randn(6, kv_heads, 96, head_dim).to(dtype)
    # Rows out of order and not all of them; lengths across block boundaries (32), 1 to full.
    rows, lengths = [4, 0, 5, 2, 1], [1, 31, 33, 64, 96]
    query = torch.randn(len(rows), heads, head_dim).to(dtype)
    got = attend(query, keys, values, rows, lengths)
    assert got.dtype == dtype and got.shape == query.shape
    torch.testing.assert_close(
        got.double(), reference(query, keys, values, rows, lengths), atol=tolerance, rtol=tolerance
    )


@pytest.mark.usefixtures("kernel")
def test_columns_past_a_rows_length_are_never_read() -> None:
    torch.manual_seed(1)
    keys, values = torch.randn(2, 2, 64, 32), torch.randn(2, 2, 64, 32)
    query = torch.randn(2, 4, 32)
    before = attend(query, keys, values, [0, 1], [10, 40])
    keys[0, :, 10:] = float("nan")  # what lies past the lengths: poison
    values[1, :, 40:] = float("inf")
    after = attend(query, keys, values, [0, 1], [10, 40])
    assert torch.equal(before, after)


@pytest.mark.usefixtures("kernel")
def test_prefill_and_decode_tokens_in_one_call_match_causal_sdpa() -> None:
    """A mixed step: two decode tokens, then a prefill chunk of row 3 from column 5 (the
    tokens see their prompt up to themselves: causal by their lengths)."""
    torch.manual_seed(2)
    keys, values = torch.randn(4, 2, 48, 64), torch.randn(4, 2, 48, 64)
    rows = [0, 1, *[3] * 7]
    lengths = [20, 47, *range(6, 13)]
    query = torch.randn(len(rows), 8, 64)
    got = attend(query, keys, values, rows, lengths)
    torch.testing.assert_close(
        got.double(), reference(query, keys, values, rows, lengths), atol=1e-5, rtol=1e-5
    )
    # The chunk alone, as the SDPA path computes it: causal over columns [0, 12).
    chunk_q = query[2:].transpose(0, 1)[None]  # [1, heads, 7, d]
    causal = torch.ones(7, 12, dtype=torch.bool).tril(diagonal=5)
    sdpa = F.scaled_dot_product_attention(
        chunk_q, keys[3:4, :, :12], values[3:4, :, :12], attn_mask=causal, enable_gqa=True
    )[0].transpose(0, 1)
    torch.testing.assert_close(got[2:], sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("kernel")
def test_a_query_that_is_a_strided_view_is_read_as_such() -> None:
    """The backend hands the kernel ``[T, heads, d]`` views of ``[heads, T, d]`` queries."""
    torch.manual_seed(3)
    keys, values = torch.randn(3, 2, 40, 32), torch.randn(3, 2, 40, 32)
    packed = torch.randn(4, 5, 32)  # [heads, T, d]
    view = packed.transpose(0, 1)
    assert not view.is_contiguous()
    rows, lengths = [0, 1, 2, 2, 1], [3, 40, 17, 18, 9]
    torch.testing.assert_close(
        attend(view, keys, values, rows, lengths), attend(view.contiguous(), keys, values, rows, lengths)
    )


@pytest.mark.usefixtures("kernel")
def test_bad_input_is_refused_by_the_kernel() -> None:
    keys = torch.randn(2, 2, 8, 32)
    with pytest.raises(RuntimeError, match="multiple of key/value heads"):
        attend(torch.randn(1, 3, 32), keys, keys, [0], [4])
    with pytest.raises(RuntimeError, match="share a dtype"):
        attend(torch.randn(1, 4, 32, dtype=torch.bfloat16), keys, keys, [0], [4])
    # Out of the cache: refused before anything is read.
    with pytest.raises(RuntimeError, match="not in the cache"):
        attend(torch.randn(1, 4, 32), keys, keys, [2], [4])
    with pytest.raises(RuntimeError, match=r"not in 0\.\.8"):
        attend(torch.randn(1, 4, 32), keys, keys, [0], [9])
    with pytest.raises(RuntimeError, match="one shape"):
        attend(torch.randn(1, 4, 32), keys, keys[:, :, :4], [0], [4])


@pytest.mark.usefixtures("kernel")
def test_a_row_of_length_zero_attends_to_nothing() -> None:
    keys = torch.randn(2, 1, 8, 32)
    assert torch.equal(attend(torch.randn(1, 2, 32), keys, keys, [1], [0]), torch.zeros(1, 2, 32))


@pytest.mark.usefixtures("kernel")
def test_a_backend_on_the_kernel_decodes_the_greedy_tokens_of_one_on_gemms(random_model_dir: Path) -> None:
    """float32, mixed steps first (a small step budget), then decode-only steps: the same
    tokens, log-probabilities within float32 rounding."""
    on = _backend(random_model_dir, step_tokens=48, native_dir=env.native_dir(), native_attention="on")
    off = _backend(random_model_dir, step_tokens=48, native_dir=env.native_dir(), native_attention="off")
    assert (on.attention, off.attention) == ("native", "gemm")
    assert off.attention_fallback == "turned off (SLUICE_NATIVE_ATTENTION=off)"
    assert _backend(random_model_dir).attention_fallback == "no build directory was given for it"
    auto = _backend(random_model_dir, native_dir=env.native_dir())
    assert (auto.attention, auto.attention_fallback) == ("native", "")
    got, want = _run(on), _run(off)
    for key in PROMPTS:
        assert [t for t, _ in got[key]] == [t for t, _ in want[key]], key
        for (_, lp_got), (_, lp_want) in zip(got[key], want[key], strict=True):
            assert lp_got == pytest.approx(lp_want, abs=1e-4)


def test_the_fallback_says_why(tmp_path: Path) -> None:
    missing = native.kernel(tmp_path)  # nothing built there
    assert missing.module is None and missing.name == "gemm"
    assert "not built for this host" in missing.reason and "make install" in missing.reason


def test_the_build_is_keyed_by_source_torch_and_isa() -> None:
    root = env.native_dir()
    here = native.build_dir(root)
    assert here.name.startswith(f"{native.NAME}-{native.host_isa()}-") and here.parent == root
    assert native.build_dir(root, "avx2") != native.build_dir(root, "avx512")
