#!/usr/bin/env bash
# Side-by-side SinGAN benchmark: pegan (cargo bench) and PyTorch (bench/singan_torch.py) in one run,
# same machine, same thread count (PEGAN_BENCH_THREADS, default 2), ending with a table of both.
# Not part of the test command or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export PEGAN_BENCH_THREADS="${PEGAN_BENCH_THREADS:-2}"

if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install --quiet torch
fi

pegan_output="$(mktemp)"
trap 'rm -f "$pegan_output"' EXIT

echo "== pegan"
cargo bench -p pegan-core --bench singan | tee "$pegan_output"
echo "== PyTorch"
OMP_NUM_THREADS="$PEGAN_BENCH_THREADS" bench/.venv/bin/python bench/singan_torch.py --pegan-output "$pegan_output"
