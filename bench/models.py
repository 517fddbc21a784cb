"""Models the benchmark runs: the demo model and a realistic ~110M-parameter Llama.

The 110M model has random weights (the benchmark measures speed, not quality) in the shape the
brief names: 12 layers, hidden 768, 12 heads, vocabulary 32k, bfloat16. Its tokenizer is the
demo tokenizer padded with plain word tokens up to 32k entries, so that every id the random
model emits decodes to text and streams like a real model's output.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import env

BENCH_DIR = env.var_dir() / "bench"


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path
    dtype: str  # what the worker runs it in
    description: str


def demo_model() -> BenchModel:
    """The demo model `make run` serves (built here if missing: < 3 minutes)."""
    from inference.backends.demo_model import DemoModelSpec, build_demo_model

    path = env.default_model_path()
    if not (path / "config.json").exists():
        build_demo_model(path, DemoModelSpec())
    return BenchModel("sluice-demo", path, "float32", "demo: 3.7M-parameter Llama, float32")


def llama_110m(*, layers: int = 12, hidden: int = 768, heads: int = 12, vocab: int = 32000) -> BenchModel:
    """Random-weight Llama, built once into var/bench/models (about 110M parameters)."""
    name = f"llama-{layers}x{hidden}"
    path = BENCH_DIR / "models" / name
    if not (path / "model.safetensors").exists():
        _build_random_llama(path, layers=layers, hidden=hidden, heads=heads, vocab=vocab)
    return BenchModel(name, path, "bfloat16", f"{name}: random-weight Llama, vocab {vocab}, bfloat16")


def _build_random_llama(path: Path, *, layers: int, hidden: int, heads: int, vocab: int) -> None:
    import torch
    from tokenizers import AddedToken, Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    demo = demo_model().path
    tmp = path.with_name(path.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = Tokenizer.from_file(str(demo / "tokenizer.json"))
    base = tokenizer.get_vocab_size()
    tokenizer.add_tokens([AddedToken(f" w{i}", normalized=False) for i in range(vocab - base)])
    assert tokenizer.get_vocab_size() == vocab
    tokenizer.save(str(tmp / "tokenizer.json"))
    for name in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        shutil.copy(demo / name, tmp / name)
    eos = [int(tokenizer.token_to_id(name) or 0) for name in ("<|end|>", "<|endoftext|>")]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,  # Llama's SwiGLU sizing: ~110M parameters at 768 x 12
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=eos[1],
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    (tmp / "sluice_bench.json").write_text(json.dumps({"parameters": parameters}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def parameters(model: BenchModel) -> int:
    info = model.path / "sluice_bench.json"
    if info.exists():
        return int(json.loads(info.read_text())["parameters"])
    demo_info = model.path / "sluice_demo.json"
    return int(json.loads(demo_info.read_text()).get("parameters", 0)) if demo_info.exists() else 0
