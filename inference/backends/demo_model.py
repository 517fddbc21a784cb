"""Build Sluice's offline demo model: a byte-level BPE tokenizer and a small Llama, trained
from the corpus shipped in ``inference/demo/corpus`` (no hub download, ever).

The result is an ordinary Hugging Face model directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, chat_template.jinja, generation_config.json), so the
worker loads it exactly like any other local causal LM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tokenizer_models

from inference.backends.torch_setup import configure_threads

logger = logging.getLogger(__name__)

CORPUS_DIR = Path(__file__).resolve().parent.parent / "demo" / "corpus"
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# The demo model's chat format. Tools are announced in the system turn, Hermes-style (calls
# written as <tool_call>{"name": ..., "arguments": {...}}</tool_call>, the format of the
# version's default "hermes" tool parser); a tool's result comes back in a user turn inside
# <tool_response>; any other role renders as its own turn (as vLLM passes custom roles through).
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\n"
    "{% for message in messages if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% endfor %}You may call functions. The functions you can call:\n"
    "<tools>\n"
    # Compact (a function's JSON is most of a small model's context window).
    "{% for tool in tools %}{{ tool.function | tojson(separators=(',', ':')) }}\n"
    "{% endfor %}</tools>\n"
    'To call one, answer with <tool_call>{"name": "<function name>", "arguments": {<arguments>}'
    "}</tool_call><|end|>\n"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'system' and tools %}"
    "{% elif message['role'] == 'tool' %}<|user|>\n"
    "<tool_response>{{ message['content'] }}</tool_response><|end|>\n"
    "{% elif message.get('tool_calls') %}<|assistant|>\n"
    "{{ message['content'] or '' }}{% for call in message['tool_calls'] %}"
    '<tool_call>{"name": {{ call.function.name | tojson }}, '
    '"arguments": {{ call.function.arguments | tojson }}}</tool_call>{% endfor %}<|end|>\n'
    "{% else %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}<|end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n"
    "{% endif %}"
)
BUILD_INFO = "sluice_demo.json"


@dataclass
class DemoModelSpec:
    """Size and training budget. The defaults build in under 3 minutes on 2 CPU cores."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 704
    layers: int = 4
    heads: int = 4
    context_length: int = 1024
    seq_len: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-3
    budget_seconds: float = 150.0
    max_steps: int = 100_000
    seed: int = 0
    dialogue_weight: int = 3  # chat examples are repeated so that chat answers look like answers

    @classmethod
    def tiny(cls, budget_seconds: float = 20.0, max_steps: int = 100_000) -> DemoModelSpec:
        """A much smaller model that trains in seconds (tests, smoke checks). With ``max_steps``
        below what the budget allows, training is the same on a busy machine as on an idle one."""
        return cls(
            vocab_size=1024,
            hidden_size=128,
            intermediate_size=352,
            layers=2,
            heads=4,
            # Positions are rotary (nothing learned): room for an agent's tools and turns.
            context_length=2048,
            seq_len=64,
            batch_size=16,
            budget_seconds=budget_seconds,
            max_steps=max_steps,
        )

    def fingerprint(self, corpus_digest: str) -> str:
        payload = json.dumps({"spec": asdict(self), "corpus": corpus_digest, "v": 1}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class BuildReport:
    path: str
    fingerprint: str
    steps: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0
    first_loss: float = 0.0
    final_loss: float = 0.0
    parameters: int = 0
    sample: str = ""
    reused: bool = False
    losses: list[float] = field(default_factory=list)


def read_corpus(corpus_dir: Path = CORPUS_DIR) -> tuple[list[str], list[list[dict[str, str]]], str]:
    """Prose documents, chat conversations, and a digest of everything read."""
    digest = hashlib.sha256()
    documents: list[str] = []
    for path in sorted((corpus_dir / "prose").glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        digest.update(text.encode())
        documents.extend(part.strip() for part in text.split("\n---\n") if part.strip())
    conversations: list[list[dict[str, str]]] = []
    dialogue_file = corpus_dir / "dialogues.txt"
    if dialogue_file.exists():
        text = dialogue_file.read_text(encoding="utf-8")
        digest.update(text.encode())
        for block in text.split("\n---\n"):
            messages = []
            for line in block.strip().splitlines():
                role, sep, content = line.partition(": ")
                if sep and role in ("System", "User", "Assistant"):
                    messages.append({"role": role.lower(), "content": content.strip()})
            if messages:
                conversations.append(messages)
    return documents, conversations, digest.hexdigest()


def _train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    tokenizer = Tokenizer(tokenizer_models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _render(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)


def build_demo_model(
    out_dir: Path,
    spec: DemoModelSpec | None = None,
    *,
    corpus_dir: Path = CORPUS_DIR,
    threads: int = 0,
    force: bool = False,
    log: Callable[[str], None] = logger.info,
) -> BuildReport:
    """Train and save the demo model into ``out_dir`` (atomically); reuse it if up to date."""
    # lazy: transformers' model classes take seconds to import; reading the corpus needs none
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = spec or DemoModelSpec()
    documents, conversations, corpus_digest = read_corpus(corpus_dir)
    if not documents and not conversations:
        raise ValueError(f"no corpus found under {corpus_dir}")
    fingerprint = spec.fingerprint(corpus_digest)
    info_path = out_dir / BUILD_INFO
    if not force and info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") == fingerprint and (out_dir / "model.safetensors").exists():
            # The chat format is not in the weights: a model built before it changed gets the
            # current one (a rewrite of one small file, not a retraining).
            template = out_dir / "chat_template.jinja"
            if not template.exists() or template.read_text(encoding="utf-8") != CHAT_TEMPLATE:
                staged = template.with_name(template.name + ".new")
                staged.write_text(CHAT_TEMPLATE, encoding="utf-8")
                staged.replace(template)
            return BuildReport(
                path=str(out_dir), fingerprint=fingerprint, reused=True, sample=info.get("sample", "")
            )

    started = time.monotonic()
    configure_threads(threads)
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)

    chat_texts = [_render(messages) for messages in conversations]
    tokenizer = _train_tokenizer(documents + chat_texts, spec.vocab_size)
    eot = tokenizer.token_to_id("<|endoftext|>")
    end = tokenizer.token_to_id("<|end|>")
    log(f"tokenizer: {tokenizer.get_vocab_size()} tokens ({time.monotonic() - started:.1f}s)")

    pieces: list[list[int]] = [[*tokenizer.encode(doc).ids, eot] for doc in documents]
    for text in chat_texts:
        pieces.extend([[*tokenizer.encode(text).ids, eot]] * spec.dialogue_weight)
    random.shuffle(pieces)
    stream = torch.tensor([token for piece in pieces for token in piece], dtype=torch.long)
    if stream.numel() < spec.seq_len + 2:
        raise ValueError("corpus is too small for the sequence length")
    log(f"corpus: {len(documents)} documents, {len(conversations)} conversations, {stream.numel()} tokens")

    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.context_length,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=[end, eot],
        pad_token_id=eot,
    )
    model = LlamaForCausalLM(config)
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=0.1
    )
    warmup = 20
    losses: list[float] = []
    step = 0
    train_started = time.monotonic()
    budget = max(1.0, spec.budget_seconds - (train_started - started))
    while step < spec.max_steps:
        elapsed = time.monotonic() - train_started
        if elapsed >= budget:
            break
        # The schedule follows whichever bound comes first: time (the demo model) or steps.
        progress = min(1.0, max(elapsed / budget, step / spec.max_steps))
        lr = (
            spec.learning_rate
            * min(1.0, (step + 1) / warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, stream.numel() - spec.seq_len - 1, (spec.batch_size,))
        batch = torch.stack([stream[s : s + spec.seq_len + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log(f"step {step}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f} ({elapsed:.0f}s)")

    model.eval()
    tmp_dir = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    GenerationConfig(
        eos_token_id=[end, eot], pad_token_id=eot, do_sample=True, temperature=0.7, top_p=0.9
    ).save_pretrained(tmp_dir)
    tokenizer.save(str(tmp_dir / "tokenizer.json"))
    (tmp_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": spec.context_length,
        "clean_up_tokenization_spaces": False,
    }
    (tmp_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (tmp_dir / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|end|>", "pad_token": "<|endoftext|>"}, indent=2), encoding="utf-8"
    )
    sample = _sample(model, tokenizer, "<|user|>\nTell me about rivers.<|end|>\n<|assistant|>\n", end, eot)
    report = BuildReport(
        path=str(out_dir),
        fingerprint=fingerprint,
        steps=step,
        tokens_seen=step * spec.batch_size * spec.seq_len,
        seconds=round(time.monotonic() - started, 1),
        first_loss=round(sum(losses[:10]) / max(1, len(losses[:10])), 3),
        final_loss=round(sum(losses[-20:]) / max(1, len(losses[-20:])), 3),
        parameters=parameters,
        sample=sample,
        losses=[round(x, 3) for x in losses[:: max(1, len(losses) // 50)]],
    )
    info = {k: v for k, v in asdict(report).items() if k not in ("path", "reused", "losses")}
    info["spec"] = asdict(spec)
    (tmp_dir / BUILD_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    log(
        f"saved {out_dir}: {parameters / 1e6:.1f}M parameters, {step} steps, "
        f"loss {report.final_loss} ({report.seconds}s)"
    )
    return report


@torch.inference_mode()
def _sample(model: Any, tokenizer: Any, prompt: str, *stop_ids: int) -> str:
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    generator = torch.Generator().manual_seed(0)
    out: list[int] = []
    for _ in range(48):
        logits = model(input_ids=ids).logits[0, -1] / 0.7
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token in stop_ids:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return str(tokenizer.decode(out, skip_special_tokens=True))
