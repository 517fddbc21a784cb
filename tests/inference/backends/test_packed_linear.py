"""Linear layers on oneDNN-packed weights compute what torch's nn.Linear computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.backends.packed_linear import PackedLinear, pack_linears, packable
from inference.backends.torch_local import TorchCausalLMBackend
from inference.sampling_params import SamplingParams
from tests.inference.backends.test_kv_cache import _backend

pytestmark = pytest.mark.skipif(
    not packable(torch.device("cpu"), torch.float32), reason="torch built without oneDNN"
)


def test_a_packed_linear_matches_nn_linear_for_any_row_count() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 160)
    packed = PackedLinear(linear.weight, linear.bias)
    with torch.inference_mode():
        for shape in ((1, 96), (1, 7, 96), (3, 33, 96)):  # one decode row, a chunk, a batch
            x = torch.randn(shape)
            assert torch.allclose(packed(x), linear(x), atol=1e-5, rtol=1e-5)


def test_only_plain_linears_are_replaced() -> None:
    class Lora(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), Lora(8, 8), torch.nn.Linear(8, 4))
    assert pack_linears(model, torch.float32) == 2
    assert [type(m).__name__ for m in model] == ["PackedLinear", "ReLU", "Lora", "PackedLinear"]
    assert pack_linears(torch.nn.Sequential(torch.nn.Linear(8, 8).half()), torch.float16) == 0


def test_packed_backend_decodes_the_same_tokens(random_model_dir: Path) -> None:
    """Greedy, float32, fused steps (decodes beside prefill chunks): the same token ids and
    log-probabilities with packed and with torch's own linears. The tiny random model's
    near-uniform logits turn any real difference into other tokens."""
    prompts = {f"s{i}": [(i * 37 + j * 11) % 1000 + 5 for j in range(n)] for i, n in enumerate((5, 40, 90))}
    params = SamplingParams(max_tokens=64, temperature=0.0)

    def run(backend: TorchCausalLMBackend) -> dict[str, list[tuple[int, float]]]:
        got: dict[str, list[tuple[int, float]]] = {key: [] for key in prompts}
        assert backend.enqueue(list(prompts), list(prompts.values()), [params] * len(prompts)) == {}
        for _ in range(30):
            for key, sampled in backend.step().items():
                assert not isinstance(sampled, Exception)
                got[key].append((sampled.token_id, sampled.logprob))
        return got

    plain = _backend(random_model_dir, step_tokens=24, packed_linear=False)
    packed = _backend(random_model_dir, step_tokens=24, packed_linear=True)
    assert plain.packed_linears == 0
    # Every projection of every layer (q/k/v fused into one, gate/up into one) and the LM head.
    assert packed.packed_linears == 4 * packed.n_layers + 1
    expected, got = run(plain), run(packed)
    assert all(len(tokens) >= 20 for tokens in got.values())
    for key in prompts:
        assert [t for t, _ in got[key]] == [t for t, _ in expected[key]], key
        for (_, lp_got), (_, lp_plain) in zip(got[key], expected[key], strict=True):
            assert lp_got == pytest.approx(lp_plain, abs=1e-4)
