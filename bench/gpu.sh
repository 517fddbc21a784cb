#!/bin/sh
# The engine on a CUDA machine (bench/gpu.py says what it measures): under 8 minutes, writes its
# table to bench/results/gpu-<time>.md. Needs `make install` done first (a CUDA torch build).
set -e
cd "$(dirname "$0")/.."
exec .venv/bin/python -m bench.gpu "$@"
