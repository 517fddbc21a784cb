"""Tokenizer and chat template of a model directory, without torch.

The gateway (to validate prompt length) and the worker (to build the prompt it runs) both use
this module, so both count the same tokens. It reads the standard HF files: ``tokenizer.json``
(fast tokenizer), ``tokenizer_config.json`` and ``chat_template.jinja`` (or the template
inside ``tokenizer_config.json``), ``config.json`` and ``generation_config.json``.

The chat template comes from the operator's model directory, never from a request, and is
rendered in Jinja's immutable sandbox as transformers does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

# A minimal fallback for model directories without a chat template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class ModelFilesError(Exception):
    """The model directory lacks what Sluice needs (tokenizer.json, config.json)."""


class ChatTemplateError(Exception):
    """The messages could not be rendered by the model's chat template."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


@dataclass
class ModelInfo:
    """What the gateway and the worker need to know about a served model."""

    name: str
    path: Path
    #: An operator's limit (a model version's context_length); 0: the model config's.
    context_override: int = 0

    @cached_property
    def config(self) -> dict[str, Any]:
        config = _read_json(self.path / "config.json")
        if not config:
            raise ModelFilesError(f"{self.path} has no config.json: not a Hugging Face model directory")
        return config

    @cached_property
    def tokenizer_config(self) -> dict[str, Any]:
        return _read_json(self.path / "tokenizer_config.json")

    @cached_property
    def tokenizer(self) -> Tokenizer:
        path = self.path / "tokenizer.json"
        if not path.exists():
            raise ModelFilesError(f"{self.path} has no tokenizer.json (a fast tokenizer is required)")
        return Tokenizer.from_file(str(path))

    @cached_property
    def context_length(self) -> int:
        if self.context_override > 0:
            return self.context_override
        config = self.config.get("text_config", self.config)
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @cached_property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size") or self.tokenizer.get_vocab_size())

    @cached_property
    def bos_token(self) -> str | None:
        return _token_content(self.tokenizer_config.get("bos_token"))

    @cached_property
    def eos_token(self) -> str | None:
        return _token_content(self.tokenizer_config.get("eos_token"))

    @cached_property
    def eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.config, _read_json(self.path / "generation_config.json")):
            value = source.get("eos_token_id")
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value if isinstance(v, int))
        if self.eos_token:
            token_id = self.tokenizer.token_to_id(self.eos_token)
            if token_id is not None:
                ids.add(token_id)
        return frozenset(ids)

    @cached_property
    def chat_template(self) -> str:
        template_file = self.path / "chat_template.jinja"
        if template_file.exists():
            return template_file.read_text(encoding="utf-8")
        template = self.tokenizer_config.get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: use "default"
            for entry in template:
                if isinstance(entry, dict) and entry.get("name") == "default":
                    return str(entry.get("template", ""))
        return DEFAULT_CHAT_TEMPLATE

    @cached_property
    def _compiled_template(self) -> Any:
        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def strftime_now(fmt: str) -> str:
            return datetime.now(tz=UTC).strftime(fmt)

        def tojson(
            value: Any,
            ensure_ascii: bool = False,
            indent: int | None = None,
            separators: tuple[str, str] | None = None,
            sort_keys: bool = False,
        ) -> str:
            # As transformers does: Jinja's own tojson escapes HTML characters, which changes
            # the text (and the tokens) a template renders for tools and arguments.
            return json.dumps(
                value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
            )

        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        environment.globals["raise_exception"] = raise_exception
        environment.globals["strftime_now"] = strftime_now
        environment.filters["tojson"] = tojson
        return environment.from_string(self.chat_template)

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        """The template's text for these messages; ``tools`` (OpenAI function tools) as
        transformers' ``apply_chat_template(tools=...)`` passes them: None when there are none."""
        try:
            return str(
                self._compiled_template.render(
                    messages=list(messages),
                    tools=list(tools) if tools else None,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token or "",
                    eos_token=self.eos_token or "",
                )
            )
        except TemplateError as exc:
            raise ChatTemplateError(str(exc)) from exc
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # A template reading a field the messages do not have the way it expects.
            raise ChatTemplateError(f"{type(exc).__name__}: {exc}") from exc

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def chat_prompt_ids(
        self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        # The template writes any BOS itself (as transformers' apply_chat_template assumes).
        return self.encode(self.render_chat(messages, tools=tools), add_special_tokens=False)

    def completion_prompt_ids(self, prompt: str) -> list[int]:
        return self.encode(prompt, add_special_tokens=True)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    @cached_property
    def _byte_level(self) -> bool:
        decoder = _read_json(self.path / "tokenizer.json").get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
        return "ByteLevel" in kinds

    def token_text(self, token_id: int) -> str:
        """One token as text (a byte-level token that is part of a character decodes to U+FFFD,
        as in vLLM's logprobs); special tokens keep their text."""
        return str(self.tokenizer.decode([int(token_id)], skip_special_tokens=False))

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        added = _read_json(self.path / "tokenizer.json").get("added_tokens") or []
        return (
            frozenset(int(t["id"]) for t in added if isinstance(t, dict) and t.get("special"))
            | self.eos_token_ids
        )

    def is_special(self, token_id: int) -> bool:
        """A special token (end of sequence, a chat-format marker): it adds no text."""
        return int(token_id) in self._special_ids

    def token_bytes(self, token_id: int) -> list[int]:
        """The UTF-8 bytes a token stands for (OpenAI's ``bytes`` in logprobs): exact for
        byte-level BPE and SentencePiece byte-fallback tokens, else the text's encoding."""
        piece = self.tokenizer.id_to_token(int(token_id))
        if piece is None:
            return []
        if self._byte_level:
            table = _unicode_to_byte()
            if all(char in table for char in piece):
                return [table[char] for char in piece]
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return [int(piece[3:5], 16)]
            except ValueError:
                pass
        return list(self.token_text(token_id).encode("utf-8"))


@cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character each byte is shown as."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_cache: dict[tuple[str, Path, float, int], ModelInfo] = {}
_cache_lock = threading.Lock()


def model_info(name: str, path: str | Path, context_override: int = 0) -> ModelInfo:
    """A cached `ModelInfo`, reloaded when the directory's config.json changes (hot rebuilds)."""
    resolved = Path(path).resolve()
    try:
        stamp = (resolved / "config.json").stat().st_mtime
    except OSError:
        stamp = 0.0
    key = (name, resolved, stamp, context_override)
    with _cache_lock:
        info = _cache.get(key)
        if info is None:
            info = ModelInfo(name=name, path=resolved, context_override=context_override)
            _cache[key] = info
        return info
