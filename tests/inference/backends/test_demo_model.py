"""The offline demo-model builder: a loadable HF directory whose training loss fell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from inference.backends.demo_model import BUILD_INFO, DemoModelSpec, build_demo_model, read_corpus
from inference.prompts import ModelInfo


def test_corpus_is_bundled_and_small() -> None:
    documents, conversations, digest = read_corpus()
    corpus_dir = Path(__file__).resolve().parents[3] / "inference" / "demo" / "corpus"
    size = sum(p.stat().st_size for p in corpus_dir.rglob("*") if p.is_file())
    assert size <= 2 * 1024 * 1024
    assert len(documents) >= 10 and len(conversations) >= 50
    assert all(m["role"] in ("system", "user", "assistant") for c in conversations for m in c)
    assert len(digest) == 64


def test_built_model_is_a_normal_hf_directory(demo_model_dir: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        BUILD_INFO,
    ):
        assert (demo_model_dir / name).exists(), name
    info = json.loads((demo_model_dir / BUILD_INFO).read_text())
    assert info["final_loss"] < info["first_loss"] - 1.0  # it learned something
    model: Any = AutoModelForCausalLM.from_pretrained(demo_model_dir, local_files_only=True)
    meta = ModelInfo("demo", demo_model_dir)
    ids = meta.chat_prompt_ids([{"role": "user", "content": "Tell me about rivers."}])
    out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=0)
    text = meta.decode(out[0, len(ids) :].tolist())
    assert sum(ch.isalpha() for ch in text) > 10  # letters, words: it writes text


def test_rebuild_is_skipped_when_up_to_date(demo_model_dir: Path) -> None:
    spec = DemoModelSpec(**json.loads((demo_model_dir / BUILD_INFO).read_text())["spec"])
    report = build_demo_model(demo_model_dir, spec)
    assert report.reused


def test_quick_build_from_a_custom_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "prose").mkdir(parents=True)
    (corpus / "prose" / "a.txt").write_text("The cat sat on the mat. " * 200)
    (corpus / "dialogues.txt").write_text(
        "User: Hi\nAssistant: Hello there.\n---\nUser: Bye\nAssistant: Goodbye.\n"
    )
    spec = DemoModelSpec(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        layers=1,
        heads=2,
        context_length=128,
        seq_len=32,
        batch_size=4,
        budget_seconds=3,
    )
    report = build_demo_model(tmp_path / "model", spec, corpus_dir=corpus)
    assert not report.reused and report.steps > 0
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert not (tmp_path / "model.building").exists()
