"""A model version's dtype: bfloat16 and int8 (dynamic quantization) versions of the demo model
load and produce text like float32 (their speed is in `python -m bench --only dtypes`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.backends.torch_local import TorchCausalLMBackend
from inference.prompts import ModelInfo
from inference.sampling_params import SamplingParams


def generate(model_dir: Path, dtype: str, prompt: str, tokens: int = 24) -> tuple[str, str]:
    info = ModelInfo("demo", model_dir)
    backend = TorchCausalLMBackend(
        model_dir, dtype=dtype, threads=1, eos_token_ids=[], vocab_decode=info.decode
    )
    params = SamplingParams(max_tokens=tokens, temperature=0)
    first = backend.add(["s"], [info.completion_prompt_ids(prompt)], [params])["s"]
    assert not isinstance(first, Exception)
    ids = [first.token_id]
    while len(ids) < tokens:
        step = backend.step()["s"]
        assert not isinstance(step, Exception)
        ids.append(step.token_id)
    backend.close()
    return backend.description, info.decode(ids)


@pytest.mark.parametrize(
    ("dtype", "description"), [("bfloat16", "cpu/bfloat16"), ("int8", "cpu/int8-dynamic")]
)
def test_reduced_precision_versions_produce_text(demo_model_dir: Path, dtype: str, description: str) -> None:
    # (Not compared with float32's continuation: the tiny test model is trained for seconds, so
    # a lower precision may pick another near-tie token and continue differently.)
    loaded_as, text = generate(demo_model_dir, dtype, "The river")
    assert loaded_as == description
    words = text.split()
    assert len(words) >= 3 and sum(w.strip(".,;:!?'\"").isalpha() for w in words) >= len(words) // 2, text


def test_int8_needs_the_cpu(demo_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="CPU"):
        TorchCausalLMBackend(demo_model_dir, device="meta", dtype="int8", threads=1)
