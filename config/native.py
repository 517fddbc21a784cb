"""``python -m config.native``: compile Sluice's attention kernel (inference/backends/native)
for this host into ``<var dir>/native`` (``make install`` runs it; a few seconds when the build
is there). A failed build is not a failed install: the workers use torch's batched GEMMs and
say why."""

from __future__ import annotations

import sys
import time

from config import env
from inference.backends.native import build, host_isa


def main(argv: list[str]) -> int:
    started = time.monotonic()
    try:
        path = build(env.native_dir(), verbose="-v" in argv)
    except Exception as exc:  # the GEMM path still serves: say why, do not fail the install
        print(
            f"native attention kernel: build failed ({exc}); workers use torch's batched GEMMs",
            file=sys.stderr,
        )
        return 0
    print(f"native attention kernel ({host_isa()}): {path} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
