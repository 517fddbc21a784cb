"""The engine on a CUDA machine (issue 34, item 5): one prepared command, never needed by tests.

    bench/gpu.sh                      # or: python -m bench.gpu [--model llama-1b] [--out FILE]

1. Correctness of the CUDA path first: the same prompts decoded greedily by Sluice's backend
   (packed steps, slot KV cache, torch's attention on the GPU) and by transformers' own
   ``generate``; the token ids must be equal (bfloat16 on both sides, so a near-tie may flip a
   late token: the table shows how many tokens agree before the first difference).
2. Then tokens/s: Sluice's backend against the raw model's loop (``bench/raw.py``) at batch
   1, 16 and 64, 64-token prompts, 64 new tokens.

Sized for under 8 minutes on one GPU with the ~1B random-weight Llama (built on first use,
about a minute); writes a markdown table to ``--out`` (default
``bench/results/gpu-<time>.md``) and prints it. On a machine without CUDA it says so and runs
nothing, unless ``--device cpu`` is given (a smoke run, e.g. with ``--model demo``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import raw
from bench.models import BenchModel, demo_model, llama_110m
from inference.backends.torch_local import TorchCausalLMBackend
from inference.sampling_params import SamplingParams


def _llama_1b() -> BenchModel:
    return llama_110m(layers=16, hidden=2048, heads=16)


MODELS: dict[str, Callable[[], BenchModel]] = {"llama-1b": _llama_1b, "llama": llama_110m, "demo": demo_model}
PROMPTS = 4
PROMPT_TOKENS = 48
NEW_TOKENS = 32


def _prompts(vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return torch.randint(10, min(vocab, 2000), (PROMPTS, PROMPT_TOKENS), generator=generator).tolist()


@torch.inference_mode()
def correctness(model: BenchModel, device: str, dtype: str) -> list[dict[str, Any]]:
    """Greedy tokens of Sluice's backend against transformers' ``generate``, prompt by prompt."""
    backend = TorchCausalLMBackend(
        model.path, device=device, dtype=dtype, max_batch_size=PROMPTS, eos_token_ids=[]
    )
    prompts = _prompts(backend.vocab_size)
    keys = [f"c{i}" for i in range(PROMPTS)]
    ours: dict[str, list[int]] = {key: [] for key in keys}
    first = backend.add(keys, prompts, [SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)] * PROMPTS)
    for key, sampled in first.items():
        assert not isinstance(sampled, Exception), sampled
        ours[key].append(sampled.token_id)
    for _ in range(NEW_TOKENS - 1):
        for key, sampled in backend.step().items():
            assert not isinstance(sampled, Exception), sampled
            ours[key].append(sampled.token_id)
    reference_model = backend.model  # the same weights, transformers' own forward and cache
    rows = []
    for key, prompt in zip(keys, prompts, strict=True):
        ids = torch.tensor([prompt], device=backend.device)
        generated = reference_model.generate(
            ids, max_new_tokens=NEW_TOKENS, do_sample=False, attention_mask=torch.ones_like(ids)
        )[0, len(prompt) :].tolist()
        # generate stops at the model's end-of-sequence token; the backend here does not.
        agree = next(
            (i for i, (a, b) in enumerate(zip(ours[key], generated, strict=False)) if a != b), len(generated)
        )
        rows.append(
            {
                "prompt": key,
                "reference tokens": len(generated),
                "equal": ours[key][: len(generated)] == generated,
                "agree before first difference": agree,
            }
        )
    backend.close()
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="llama-1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to run (--device cpu for a smoke run)", file=sys.stderr)
        return 2
    started = time.time()
    model = MODELS[args.model]()
    model = BenchModel(model.name, model.path, args.dtype, model.description)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    checks = correctness(model, args.device, args.dtype)
    batches = [1, 16, 64] if args.device.startswith("cuda") else [1, 4]
    speed = _speed(model, args.device, batches)
    out = args.out or Path(__file__).parent / "results" / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.md"
    text = "\n\n".join(
        [
            f"# Engine on {device_name}: {model.name}, {args.dtype} "
            f"({time.strftime('%Y-%m-%d')}, torch {torch.__version__})",
            "## Greedy tokens: Sluice's backend against transformers' generate\n\n" + _table(checks),
            "## Decode tokens/s: Sluice's backend against the raw model's loop (64 in, 64 new)\n\n"
            + _table(speed),
            f"{time.time() - started:.0f} s in all.",
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    print(f"\nwrote {out}")
    return 0 if all(row["equal"] for row in checks) else 1


def _speed(model: BenchModel, device: str, batches: list[int]) -> list[dict[str, Any]]:
    """The raw loop (transformers' forward and cache) and Sluice's backend, best of two."""
    backend = TorchCausalLMBackend(
        model.path, device=device, dtype=model.dtype, max_batch_size=max(batches), eos_token_ids=[]
    )
    raw.backend_loop(backend, 2, 64, 4)  # warm-up
    raw.hf_loop(backend.model, 2, 64, 4)
    rows = []
    for batch in batches:
        hf = max(
            (raw.hf_loop(backend.model, batch, 64, 64) for _ in range(2)), key=lambda r: r.decode_tokens_per_s
        )
        ours = max(
            (raw.backend_loop(backend, batch, 64, 64) for _ in range(2)), key=lambda r: r.decode_tokens_per_s
        )
        rows.append(
            {
                "batch": batch,
                "raw tok/s": hf.decode_tokens_per_s,
                "sluice tok/s": ours.decode_tokens_per_s,
                "sluice / raw": round(ours.decode_tokens_per_s / hf.decode_tokens_per_s, 2),
                "sluice step ms": ours.step_ms,
            }
        )
    backend.close()
    return rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
