#!/usr/bin/env bash
# Train SinGAN with a Cartesian spatial grid (CSG) on the bundled balloons image with the `fast`
# preset, then write random samples and versions retargeted to 2× and 0.5× the width to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

variant="${VARIANT:-csg}"
# One CPU thread by default, because candle's worker pool spins while it waits for a descheduled thread.
# On a 2-core machine that other builds kept busy (load average 5-7), the fast preset with 8 iterations per
# stage trained in 52-58 s with --threads 1 and in 254-285 s with the default of one thread per core.
# Set THREADS to another count on an idle machine with more cores.
threads="${THREADS:-1}"
out=out/demo
mkdir -p "$out"

cargo build --release -p pegan-cli
pegan=target/release/pegan

"$pegan" singan train examples/data/balloons.png --variant "$variant" --preset fast --seed 0 \
    --threads "$threads" -o "$out/balloons-$variant.pegan"

"$pegan" singan sample "$out/balloons-$variant.pegan" -n 3 --seed 1 -o "$out/samples"
"$pegan" singan sample "$out/balloons-$variant.pegan" -n 2 --seed 1 --scale-w 2 --scale-h 1 -o "$out/twice-width"
"$pegan" singan sample "$out/balloons-$variant.pegan" -n 2 --seed 1 --scale-w 0.5 --scale-h 1 -o "$out/half-width"

echo "samples written to $out/samples, $out/twice-width and $out/half-width"
