"""The Llama step without transformers' module stack computes what transformers computes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.backends.llama_step import LlamaStep, supported
from inference.backends.torch_local import TorchCausalLMBackend
from inference.sampling_params import SamplingParams
from tests.inference.backends.test_kv_cache import _backend

PROMPTS = {f"s{i}": [(i * 41 + j * 13) % 1000 + 5 for j in range(n)] for i, n in enumerate((3, 37, 70, 120))}


@pytest.fixture(scope="module", params=["qwen2", "mistral"])
def other_family_dir(
    request: pytest.FixtureRequest, random_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The random test model's shape and tokenizer as another family the fused step covers
    (Qwen2: with q/k/v biases)."""
    from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, Qwen2Config

    out = tmp_path_factory.mktemp(f"random-{request.param}") / "model"
    shutil.copytree(random_model_dir, out)  # tokenizer files; config and weights replaced below
    base = AutoConfig.from_pretrained(random_model_dir).to_dict()
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    shape: dict[str, Any] = {name: base[name] for name in names}
    shape.update(num_key_value_heads=base["num_key_value_heads"], eos_token_id=base["eos_token_id"])
    config = Qwen2Config(**shape) if request.param == "qwen2" else MistralConfig(**shape, sliding_window=None)
    torch.manual_seed(99)
    model = AutoModelForCausalLM.from_config(config)
    if request.param == "qwen2":
        with torch.no_grad():  # non-zero biases, so that fusing them is tested
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.5)
    model.save_pretrained(out)
    return out


def _run(backend: TorchCausalLMBackend, steps: int = 40) -> dict[str, list[tuple[int, float]]]:
    """Greedy decode of PROMPTS, enqueued together: with a small step budget the first steps
    carry decodes beside prefill chunks (mixed steps), later ones decodes only."""
    got: dict[str, list[tuple[int, float]]] = {key: [] for key in PROMPTS}
    params = SamplingParams(max_tokens=64, temperature=0.0)
    assert backend.enqueue(list(PROMPTS), list(PROMPTS.values()), [params] * len(PROMPTS)) == {}
    for _ in range(steps):
        for key, sampled in backend.step().items():
            assert not isinstance(sampled, Exception)
            got[key].append((sampled.token_id, sampled.logprob))
    return got


@pytest.mark.parametrize("packed", [False, True], ids=["nn-linear", "packed"])
def test_fused_step_decodes_what_transformers_forward_decodes(random_model_dir: Path, packed: bool) -> None:
    """Float32, greedy, mixed and decode-only steps: the same tokens, and log-probabilities
    within float rounding (the fused q/k/v GEMM may sum in another order), as the generic path
    through transformers' own forward on the same (fused) weights."""
    generic = _backend(random_model_dir, step_tokens=32, packed_linear=packed, fused_step=False)
    fused = _backend(random_model_dir, step_tokens=32, packed_linear=packed, fused_step=True)
    assert generic._llama_step is None and fused._llama_step is not None
    expected, got = _run(generic), _run(fused)
    assert all(len(tokens) >= 30 for tokens in got.values())
    for key in PROMPTS:
        assert [t for t, _ in got[key]] == [t for t, _ in expected[key]], key
        for (_, lp_got), (_, lp_want) in zip(got[key], expected[key], strict=True):
            assert lp_got == pytest.approx(lp_want, abs=1e-4)


def test_fused_step_covers_qwen2_and_mistral(other_family_dir: Path) -> None:
    generic = _backend(other_family_dir, step_tokens=32, packed_linear=True, fused_step=False)
    fused = _backend(other_family_dir, step_tokens=32, packed_linear=True, fused_step=True)
    assert fused._llama_step is not None, supported(fused.model)
    # Against the model as it loads (separate q/k/v, their biases): fusing changed nothing.
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(other_family_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9, 811]])
    with torch.inference_mode():
        assert torch.allclose(fused.model(ids).logits, original(ids).logits, atol=1e-4)
    expected, got = _run(generic), _run(fused)
    for key in PROMPTS:
        assert [t for t, _ in got[key]] == [t for t, _ in expected[key]], key
        for (_, lp_got), (_, lp_want) in zip(got[key], expected[key], strict=True):
            assert lp_got == pytest.approx(lp_want, abs=1e-4)


def test_fused_weights_replace_the_separate_ones(random_model_dir: Path) -> None:
    """One copy of the weights: q/k/v and gate/up become slices of one fused layer each, and
    transformers' own forward (a reference run) still computes the model's function."""
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32).eval()
    before = sum(p.numel() for p in model.parameters())
    LlamaStep(model)
    assert sum(p.numel() for p in model.parameters()) == before
    attn = model.model.layers[0].self_attn
    q, kv = model.config.num_attention_heads * attn.head_dim, model.config.num_key_value_heads * attn.head_dim
    assert type(attn.qkv_proj) is torch.nn.Linear and attn.qkv_proj.out_features == q + 2 * kv
    spans = [(part.start, part.end) for part in (attn.q_proj, attn.k_proj, attn.v_proj)]
    assert spans == [(0, q), (q, q + kv), (q + kv, q + 2 * kv)]
    ids = torch.tensor([[5, 17, 300, 42, 9, 811]])
    with torch.inference_mode():
        want, got = original(ids).logits, model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_other_models_keep_the_generic_path(random_model_dir: Path) -> None:
    """int8 dynamic quantization swaps the linear layers: nothing there to fuse."""
    backend = TorchCausalLMBackend(
        random_model_dir, dtype="int8", threads=1, max_batch_size=4, eos_token_ids=[]
    )
    assert backend._llama_step is None
    assert supported(backend.model) is not None
    first = backend.add(["q"], [[5, 6, 7]], [SamplingParams(max_tokens=4, temperature=0.0)])["q"]
    assert not isinstance(first, Exception)
