"""PyTorch side of core/benches/stylegan2.rs: the config-f generator forward pass at 256x256, batch 1,
on the CPU.

The generator is the one of bench/gpu_torch.py (pegan's config-f layer shapes, grouped modulated
convolutions as MMGeneration runs them). Threads and runs come from PEGAN_BENCH_THREADS (default 2)
and PEGAN_BENCH_RUNS (default 5, after one warm-up run), as in the Rust bench.

The forward pass's floating-point operations are counted once, outside the timed runs, with
torch.utils.flop_counter.FlopCounterMode (convolutions, the FIR filters among them, and matrix
products, 2 per multiply-add). With --pegan-output FILE (the line of `cargo bench --bench stylegan2`
from the same round) the script also prints pegan's time, the ratio and both GFLOP/s figures.
"""
import argparse
import os
import re
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_torch import StyleGan2ConfigF  # noqa: E402


def read_pegan_median_ms(path):
    """Return the median time in ms from the output of `cargo bench --bench stylegan2`."""
    with open(path, encoding="utf-8") as file:
        match = re.search(r"generator forward.*: median ([0-9.]+) ms", file.read())
    if match is None:
        raise SystemExit(f"{path}: no 'generator forward ... median N ms' line; expected the output of cargo bench --bench stylegan2")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser(description="PyTorch side of the StyleGAN2 CPU benchmark.")
    parser.add_argument(
        "--pegan-output",
        metavar="FILE",
        help="output of `cargo bench --bench stylegan2` from the same round, for a side-by-side line",
    )
    args = parser.parse_args()
    pegan_ms = read_pegan_median_ms(args.pegan_output) if args.pegan_output else None
    threads = int(os.environ.get("PEGAN_BENCH_THREADS", "2"))
    runs = max(1, int(os.environ.get("PEGAN_BENCH_RUNS", "5")))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    generator = StyleGan2ConfigF().eval()
    head_side = 4
    head = torch.randn(1, generator.head_channels, head_side, head_side)
    z = torch.randn(1, 512)
    noises = [torch.randn(1, 1, s, s) for s in generator.noise_sides(head_side)]

    def forward():
        with torch.no_grad():
            return generator(z, head, noises)

    side = forward().shape[-1]
    counter = FlopCounterMode(display=False)
    with counter:
        forward()
    flops = counter.get_total_flops()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    median_ms = statistics.median(times)
    print(
        f"config-f generator forward, {side}x{side}, batch 1, {threads} threads (torch {torch.__version__}): "
        f"median {median_ms:.1f} ms, fastest {times[0]:.1f} ms, {flops / 1e9:.1f} GFLOP, "
        f"{flops / median_ms / 1e6:.0f} GFLOP/s"
    )
    if pegan_ms is not None:
        print(
            f"pegan / PyTorch: {pegan_ms:.1f} / {median_ms:.1f} ms = {pegan_ms / median_ms:.2f}, "
            f"pegan {flops / pegan_ms / 1e6:.0f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
