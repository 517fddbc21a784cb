"""Sluice's native attention kernel (``attention.cpp``), a torch C++ extension.

Built by the project's own install (``make install`` runs ``python -m config.native``):
compiled once into ``<var dir>/native``, under a directory named for a hash of its source,
the torch version, the Python version and the vector ISA it targets (AVX-512 or AVX2, from
one source through ATen's ``at::vec``), so a changed source or a new torch builds again and an
unchanged one is reused at once. A worker only loads what was built, never compiles: when
the build is missing or fails to load, the local backend keeps its batched-GEMM attention
(``kv_cache.decode_attention``) and says so once, in its log, its heartbeat (``/metrics``'
``sluice_attention_kernel``) and the console's worker table.

``SLUICE_NATIVE_ATTENTION=off`` turns the kernel off in the workers (the GEMM path, to compare).
Where builds live is the caller's to say (``root``: the workers get ``SLUICE_NATIVE_DIR`` from
the settings); this package reads no configuration.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

NAME = "sluice_attention"
#: head_dim must be a multiple of this: the widest float vector the kernel may be built for
#: (AVX-512's 16 lanes; AVX2 has 8).
LANES = 16
SOURCE = Path(__file__).with_name("attention.cpp")

#: Compiler flags per vector ISA: ATen's at::vec picks its implementation from CPU_CAPABILITY.
ISA_FLAGS = {
    "avx512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
}  # fmt: skip


def host_isa() -> str:
    """The widest of ``ISA_FLAGS`` this CPU runs (from /proc/cpuinfo's flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "default"
    flags = set(
        next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    )
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "default"


#: at::parallel_for runs its tasks on torch's OpenMP pool only in code compiled with OpenMP:
#: without -fopenmp it runs them all on the calling thread.
COMMON_FLAGS = ["-O3", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
#: Written last by `build`: a directory without it holds no usable build (a killed compile or
#: link can leave a library behind).
DONE = "built"


def compile_flags(isa: str) -> list[str]:
    return [*COMMON_FLAGS, *ISA_FLAGS[isa]]


def build_dir(root: Path, isa: str | None = None) -> Path:
    """Where the build for this host (or ``isa``) lives under ``root``: named for a hash of
    everything that makes the library (source, torch, Python, every compile and link flag)."""
    isa = isa or host_isa()
    key = hashlib.sha256(
        SOURCE.read_bytes()
        + f"|{torch.__version__}|{sys.version_info[:2]}|{isa}|{compile_flags(isa)}|{LINK_FLAGS}".encode()
    ).hexdigest()[:16]
    return root / f"{NAME}-{isa}-{key}"


def _built(directory: Path) -> Path | None:
    if not (directory / DONE).exists():
        return None
    for suffix in (importlib.machinery.EXTENSION_SUFFIXES[0], ".so"):
        path = directory / f"{NAME}{suffix}"
        if path.exists():
            return path
    return None


def build(root: Path, *, verbose: bool = False) -> Path:
    """Compile the kernel for this host under ``root`` (nothing to do when it is there)."""
    directory = build_dir(root)
    found = _built(directory)
    if found is not None:
        return found
    from torch.utils import cpp_extension  # the compiler driver: only the build needs it

    directory.mkdir(parents=True, exist_ok=True)
    # A lock left by a killed build would make torch's builder wait for it forever: nothing
    # usable is in this directory yet (no DONE marker), so start it over.
    (directory / "lock").unlink(missing_ok=True)
    cpp_extension.load(
        name=NAME,
        sources=[str(SOURCE)],
        build_directory=str(directory),
        extra_cflags=compile_flags(host_isa()),
        extra_ldflags=LINK_FLAGS,
        verbose=verbose,
    )
    (directory / DONE).write_text(f"{torch.__version__}\n")
    found = _built(directory)
    if found is None:
        raise RuntimeError(f"the build left no library in {directory}")
    return found


@dataclass(frozen=True)
class Kernel:
    """The loaded kernel (``module``), or why there is none (``reason``)."""

    module: ModuleType | None
    reason: str = ""
    isa: str = ""

    @property
    def name(self) -> str:
        """``native`` (this kernel) or ``gemm`` (torch's batched GEMMs)."""
        return "native" if self.module is not None else "gemm"


_kernels: dict[Path, Kernel] = {}
_lock = threading.Lock()


def kernel(root: Path) -> Kernel:
    """The kernel built under ``root``, loaded once per process (and said once in the log); a
    worker never compiles: ``make install`` does."""
    with _lock:
        loaded = _kernels.get(root)
        if loaded is None:
            loaded = _kernels[root] = _load(root)
            if loaded.module is not None:
                logger.info("attention: the native kernel (%s)", loaded.isa)
            else:
                logger.warning(
                    "attention: torch's batched GEMMs (native kernel unavailable: %s)", loaded.reason
                )
        return loaded


def _load(root: Path) -> Kernel:
    directory = build_dir(root)
    path = _built(directory)
    if path is None:
        return Kernel(None, f"not built for this host ({directory.name}; `make install` builds it)")
    try:
        spec = importlib.util.spec_from_file_location(NAME, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # a library that does not load is a fallback, not a crash
        return Kernel(None, f"could not load {path.name}: {exc}")
    return Kernel(module, isa=str(module.capability()))


def slot_attention(
    module: ModuleType,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``query`` ``[T, heads, d]``: token ``t`` attends over row ``rows[t]`` of ``keys`` and
    ``values`` (``[rows, kv_heads, columns, d]``), columns ``[0, lengths[t])``; ``module``: a
    loaded `Kernel`'s."""
    out: torch.Tensor = module.slot_attention(query, keys, values, rows, lengths, scale)
    return out
