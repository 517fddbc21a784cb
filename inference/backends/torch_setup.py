"""Torch process settings for local models: device, dtype and intra-op threads."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device, config_dtype: Any = None) -> torch.dtype:
    if setting == "int8":
        return torch.float32  # int8 weights (dynamic quantization), float32 activations and cache
    if setting != "auto":
        if setting not in _DTYPES:
            raise ValueError(f"unsupported dtype {setting!r}; choose one of {[*sorted(_DTYPES), 'int8']}")
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(config_dtype, torch.dtype):
        return config_dtype
    if isinstance(config_dtype, str) and config_dtype in _DTYPES:
        return _DTYPES[config_dtype]
    return torch.float32


def configure_threads(threads: int) -> int:
    """Pin torch's intra-op threads: on a small machine, oversubscription is a 50x slowdown."""
    count = threads if threads > 0 else max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(count)
    # Interop threads can only be set once per process, before any parallel work.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return count
