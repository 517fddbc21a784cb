"""Linear layers with their weights pre-packed for oneDNN (CPU only).

A decode step multiplies a few rows of activations by every weight matrix of the model: it is
bound by reading the weights, and how they are laid out in memory decides the speed. torch's
``nn.Linear`` on CPU hands a plain row-major weight to its GEMM, which re-blocks it on every
call; oneDNN's ``_reorder_linear_weight`` does that once, at load time, into the blocked layout
its kernels read, and ``_linear_pointwise`` multiplies against it directly — the same thing
torch.compile's freezing pass does for CPU linears (``torch/_inductor/fx_passes/mkldnn_fusion``),
without a compile. Measured on the bench's ~110M Llama in float32 (2 cores): a decode step at
batch 16 from 122 to 68 ms, at batch 1 from 45 to 36 ms; prefill (large, compute-bound GEMMs)
unchanged; greedy tokens identical (bench/README.md).

bfloat16 packing needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; where the host has neither, oneDNN
refuses and the model keeps torch's linears (bf16 is emulated there anyway, DESIGN.md §2).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

#: Dtypes oneDNN packs (float16 only on hosts with AVX-512 FP16: left to torch's linear).
PACKABLE = (torch.float32, torch.bfloat16)


class PackedLinear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` in oneDNN's blocked layout (inference only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        # Buffers, not parameters: nothing trains these, and state_dict() is not a checkpoint.
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
        self.register_buffer("bias", None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN-packed"


def packable(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in PACKABLE and torch.backends.mkldnn.is_available()


def pack_linears(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Replace every ``nn.Linear`` of ``model`` (on the CPU) by a `PackedLinear`; returns how
    many were replaced (0 where this host's oneDNN cannot pack ``dtype``)."""
    if not packable(torch.device("cpu"), dtype):
        return 0
    try:
        # One small probe: oneDNN says here, not halfway through the model, if it cannot.
        PackedLinear(torch.zeros(8, 8, dtype=dtype), None)
    except RuntimeError as error:
        logger.info("oneDNN cannot pack %s linears on this host (%s): keeping torch's", dtype, error)
        return 0
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            # Exactly nn.Linear: subclasses (quantized, LoRA wrappers) compute something else.
            if type(child) is torch.nn.Linear and child.weight.device.type == "cpu":
                setattr(module, name, PackedLinear(child.weight, child.bias))
                replaced += 1
    return replaced
