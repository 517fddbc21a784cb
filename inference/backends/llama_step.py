"""The packed step of a Llama-family model without transformers' module stack.

On a CPU, a decode step of a small model is bound less by arithmetic than by the Python and
dispatch between torch ops: profiled on the bench's ~110M Llama in bf16 (2 cores), a batch-1 step
ran about 3,000 ops in 24 ms, of which the linear layers took 13 ms and the rest was per-op
overhead (transformers' decoder layers, output dataclasses, mask helpers, RMSNorm as eight ops,
``rotate_half`` as a ``cat`` per call). `LlamaStep` computes the same function from the same
weights in far fewer ops:

- q, k and v are one linear layer (their weights concatenated, so one GEMM reads them), and so
  are gate and up;
- rotary cos/sin come once per step from the model's own ``rotary_emb`` (every rope type it
  supports) and are shared by all layers;
- keys/values go to `SlotKVCache.update` and attention to `packed_attention`, the same two
  functions transformers calls on the generic path, so a step's tokens do not depend on the path;
- only the rows whose logits are wanted go through the final norm and the LM head.

It applies to models whose decoder is exactly transformers' Llama layer (`ARCHITECTURES`: Llama,
Mistral, Qwen2 with its q/k/v biases; SiLU MLP, no other biases, no sliding window, no extra
norms); any other model keeps the generic path. The fused weights
replace the separate ones in the model (no second copy): the model's own q/k/v and gate/up
modules become slices of the fused outputs, so transformers' forward still computes the same
function (a reference run, a test against ``generate``), if three times over.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from inference.backends.kv_cache import SlotKVCache, StepPlan, packed_attention


class _Slice(torch.nn.Module):
    """Columns ``[start, end)`` of a fused linear layer of ``owner`` (found by name at call
    time: the fused layer may be swapped for a packed one after this slice exists)."""

    def __init__(self, owner: torch.nn.Module, name: str, start: int, end: int) -> None:
        super().__init__()
        self._owner = [owner]  # in a list: not a submodule (owner contains this slice)
        self._name, self.start, self.end = name, start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self._owner[0], self._name)(x)[..., self.start : self.end]


def _fuse(owner: torch.nn.Module, name: str, parts: list[str]) -> None:
    """Replace ``owner``'s linear layers ``parts`` by one named ``name`` and slices of it."""
    linears = [getattr(owner, part) for part in parts]
    weight = torch.cat([linear.weight.detach() for linear in linears], dim=0)
    biased = linears[0].bias is not None  # all or none (`supported` checked)
    fused = torch.nn.Linear(
        weight.shape[1], weight.shape[0], bias=biased, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        if biased:
            fused.bias.copy_(torch.cat([linear.bias.detach() for linear in linears]))
    setattr(owner, name, fused)
    start = 0
    for part, linear in zip(parts, linears, strict=True):
        end = start + int(linear.weight.shape[0])
        setattr(owner, part, _Slice(owner, name, start, end))
        start = end


#: Decoders that are transformers' Llama layer under another name (Qwen2 adds q/k/v biases).
ARCHITECTURES = ("llama", "mistral", "qwen2")


def supported(model: Any) -> str | None:
    """None when `LlamaStep` computes ``model``'s forward exactly; else why not."""
    config = model.config
    if getattr(config, "model_type", None) not in ARCHITECTURES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {ARCHITECTURES}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        rest = [attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(linear) is not torch.nn.Linear for linear in qkv + rest):
            return "linear layers that are not torch.nn.Linear (quantized or wrapped)"
        if (
            any(linear.bias is not None for linear in rest)
            or len({linear.bias is None for linear in qkv}) > 1
        ):
            return "biases other than on all of q/k/v"
        if getattr(attn, "sliding_window", None) is not None:
            return "sliding-window attention"
    return None


class LlamaStep:
    """``model``'s forward for one packed step (see the module docstring)."""

    @classmethod
    def build(cls, model: Any) -> LlamaStep | None:
        """The fused step for ``model``, or None where it does not apply (`supported`)."""
        return cls(model) if supported(model) is None else None

    def __init__(self, model: Any) -> None:
        reason = supported(model)
        if reason is not None:
            raise ValueError(f"LlamaStep does not apply: {reason}")
        inner = model.model
        for layer in inner.layers:
            _fuse(layer.self_attn, "qkv_proj", ["q_proj", "k_proj", "v_proj"])
            _fuse(layer.mlp, "gate_up_proj", ["gate_proj", "up_proj"])
        self.model = model
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.intermediate = int(config.intermediate_size)

    def __call__(
        self, plan: StepPlan, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[len(keep), vocab]`` of the packed tokens ``input_ids`` at ``positions``
        (both ``[T]``); the step's keys/values are written to ``plan.cache``."""
        inner = self.model.model
        cache: SlotKVCache = plan.cache
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden = inner.embed_tokens(input_ids)  # [T, H]
        total = hidden.shape[0]
        cos, sin = inner.rotary_emb(hidden[None], positions[None])  # [1, T, d] each
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, d]: broadcast over heads
        half = self.head_dim // 2
        for index, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = attn.qkv_proj(_rms_norm(hidden, layer.input_layernorm))
            q = qkv[:, :q_width].view(total, self.heads, self.head_dim)
            k = qkv[:, q_width : q_width + kv_width].view(total, self.kv_heads, self.head_dim)
            v = qkv[:, q_width + kv_width :].view(total, self.kv_heads, self.head_dim)
            q, k = _rope(q, cos, sin, half), _rope(k, cos, sin, half)
            # The shapes transformers hands these functions: [1, heads, T, d].
            k_t, v_t, q_t = k.transpose(0, 1)[None], v.transpose(0, 1)[None], q.transpose(0, 1)[None]
            cache.update(k_t, v_t, index)
            out, _ = packed_attention(attn, q_t, k_t, v_t, None, scaling=attn.scaling)  # [1, T, heads, d]
            hidden = hidden + attn.o_proj(out.view(total, q_width))
            gate_up = mlp.gate_up_proj(_rms_norm(hidden, layer.post_attention_layernorm))
            hidden = hidden + mlp.down_proj(
                F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
            )
        return self.model.lm_head(_rms_norm(hidden[keep], inner.norm))


def _rms_norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    # transformers' LlamaRMSNorm, op for op (the same float32 arithmetic, so the same bits).
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x32.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    # x * cos + rotate_half(x) * sin, with rotate_half's cat written as two half products.
    out = x * cos
    lo, hi = x[..., :half], x[..., half:]
    out[..., :half] -= hi * sin[..., :half]
    out[..., half:] += lo * sin[..., half:]
    return out
