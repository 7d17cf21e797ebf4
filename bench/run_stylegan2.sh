#!/usr/bin/env bash
# Side-by-side StyleGAN2 config-f generator forward at 256x256 on the CPU: pegan (cargo bench) and
# PyTorch (bench/stylegan2_torch.py), alternating for PEGAN_BENCH_ROUNDS rounds (default 3) so that both
# see the same machine state. Same thread count for both (PEGAN_BENCH_THREADS, default 2). Not part of
# the test command or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export PEGAN_BENCH_THREADS="${PEGAN_BENCH_THREADS:-2}"
rounds="${PEGAN_BENCH_ROUNDS:-3}"

if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install --quiet torch numpy
fi

pegan_output="$(mktemp)"
trap 'rm -f "$pegan_output"' EXIT

cargo bench -p pegan-core --bench stylegan2 --no-run
for round in $(seq "$rounds"); do
    echo "== round $round"
    cargo bench -q -p pegan-core --bench stylegan2 | grep "generator forward" | tee "$pegan_output"
    OMP_NUM_THREADS="$PEGAN_BENCH_THREADS" bench/.venv/bin/python bench/stylegan2_torch.py --pegan-output "$pegan_output"
done
