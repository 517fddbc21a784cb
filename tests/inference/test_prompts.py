"""Tokenizer and chat template of a model directory (no torch)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from inference.prompts import ChatTemplateError, ModelFilesError, ModelInfo, model_info


def test_chat_template_renders_roles_and_generation_prompt(demo_model_dir: Path) -> None:
    info = ModelInfo("demo", demo_model_dir)
    text = info.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    ids = info.chat_prompt_ids([{"role": "user", "content": "Hi"}])
    # Special tokens are single ids, not spelled out.
    assert ids[0] == info.tokenizer.token_to_id("<|user|>")


def test_template_errors_are_reported(demo_model_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_model_dir / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('unsupported role: ' ~ m['role']) }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    info = ModelInfo("strict", tmp_path)
    with pytest.raises(ChatTemplateError, match="unsupported role: critic"):
        info.render_chat([{"role": "critic", "content": "x"}])


def test_tools_and_calls_go_through_the_template(demo_model_dir: Path) -> None:
    """As transformers' apply_chat_template(tools=...): tools as JSON (not HTML-escaped: '<'
    stays '<'), an assistant's calls and a tool's result as the template writes them."""
    info = ModelInfo("demo", demo_model_dir)
    tools = [{"type": "function", "function": {"name": "f", "description": "a <b>", "parameters": {}}}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
        {"role": "critic", "content": "ok"},
    ]
    text = info.render_chat(messages, tools=tools)
    assert '{"name":"f","description":"a <b>","parameters":{}}' in text
    assert '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>' in text
    assert "<tool_response>done</tool_response>" in text and "<|critic|>\nok<|end|>" in text
    assert "<tools>" not in info.render_chat(messages[:1])


def test_user_text_is_not_rendered_as_a_template(demo_model_dir: Path) -> None:
    info = ModelInfo("demo", demo_model_dir)
    text = info.render_chat([{"role": "user", "content": "{{ 7 * 7 }} {% if true %}x{% endif %}"}])
    assert "{{ 7 * 7 }} {% if true %}x{% endif %}" in text
    assert "49" not in text


def test_metadata(demo_model_dir: Path) -> None:
    info = model_info("demo", demo_model_dir)
    assert info.context_length == 2048
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
