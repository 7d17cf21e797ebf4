#!/usr/bin/env bash
# Train SinGAN with a Cartesian spatial grid (CSG) on the bundled balloons image with the `fast`
# preset, then write random samples and versions retargeted to 2× and 0.5× the width to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

variant="${VARIANT:-csg}"
# One CPU thread by default, because candle's worker pool spins while it waits for a descheduled thread.
# On a 2-core machine that other builds kept busy (load average 5-7), a short run with 8 iterations per
# stage took 52-58 s with --threads 1 and 254-285 s with one thread per core. On an idle 2-core machine
# the fast preset (120 iterations per stage) trained in 219 s with one thread and 158 s with two. Set
# THREADS to the core count on an idle machine.
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
