#!/usr/bin/env bash
# Train SinGAN with a Cartesian spatial grid (CSG) on the bundled balloons image with the `fast`
# preset, then write a random sample and retargeted versions (2× and 0.5× width) to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

variant="${VARIANT:-csg}"
out=out/demo
mkdir -p "$out"

cargo build --release -p pegan-cli
pegan=target/release/pegan

"$pegan" singan train examples/data/balloons.png --variant "$variant" --preset fast --seed 0 \
    -o "$out/balloons-$variant.pegan"

# balloons.png is 248×186 pixels.
"$pegan" singan sample "$out/balloons-$variant.pegan" -n 3 --seed 1 -o "$out/samples-$variant"
"$pegan" singan retarget "$out/balloons-$variant.pegan" --width 496 --height 186 --seed 1 \
    -o "$out/balloons-$variant-2x-width.png"
"$pegan" singan retarget "$out/balloons-$variant.pegan" --width 124 --height 186 --seed 1 \
    -o "$out/balloons-$variant-half-width.png"

echo "wrote $out/samples-$variant/ and $out/balloons-$variant-{2x,half}-width.png"
