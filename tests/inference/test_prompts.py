"""Tokenizer and chat template of a model directory (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.prompts import ChatTemplateError, ModelFilesError, ModelInfo, model_info


def test_chat_template_renders_roles_and_generation_prompt(demo_model_dir: Path) -> None:
    info = ModelInfo("demo", demo_model_dir)
    text = info.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    ids = info.chat_prompt_ids([{"role": "user", "content": "Hi"}])
    # Special tokens are single ids, not spelled out.
    assert ids[0] == info.tokenizer.token_to_id("<|user|>")


def test_template_errors_are_reported(demo_model_dir: Path) -> None:
    info = ModelInfo("demo", demo_model_dir)
    with pytest.raises(ChatTemplateError, match="unsupported role"):
        info.render_chat([{"role": "tool", "content": "x"}])


def test_user_text_is_not_rendered_as_a_template(demo_model_dir: Path) -> None:
    info = ModelInfo("demo", demo_model_dir)
    text = info.render_chat([{"role": "user", "content": "{{ 7 * 7 }} {% if true %}x{% endif %}"}])
    assert "{{ 7 * 7 }} {% if true %}x{% endif %}" in text
    assert "49" not in text


def test_metadata(demo_model_dir: Path) -> None:
    info = model_info("demo", demo_model_dir)
    assert info.context_length == 512
    assert info.eos_token_ids == {
        info.tokenizer.token_to_id("<|end|>"),
        info.tokenizer.token_to_id("<|endoftext|>"),
    }
    assert info.decode(info.encode("hello world", add_special_tokens=False)) == "hello world"
    assert model_info("demo", demo_model_dir) is info  # cached


def test_missing_files(tmp_path: Path) -> None:
    info = ModelInfo("nothing", tmp_path)
    with pytest.raises(ModelFilesError):
        _ = info.config
    with pytest.raises(ModelFilesError):
        _ = info.tokenizer
