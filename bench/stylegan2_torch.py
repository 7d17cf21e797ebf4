"""PyTorch side of core/benches/stylegan2.rs: the config-f generator forward pass at 256x256, batch 1,
on the CPU.

The generator is the one of bench/gpu_torch.py (pegan's config-f layer shapes, grouped modulated
convolutions as MMGeneration runs them). Threads and runs come from PEGAN_BENCH_THREADS (default 2)
and PEGAN_BENCH_RUNS (default 5, after one warm-up run), as in the Rust bench.
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_torch import StyleGan2ConfigF  # noqa: E402


def main():
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
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    print(
        f"config-f generator forward, {side}x{side}, batch 1, {threads} threads (torch {torch.__version__}): "
        f"median {statistics.median(times):.1f} ms, fastest {times[0]:.1f} ms"
    )


if __name__ == "__main__":
    main()
