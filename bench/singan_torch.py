"""PyTorch side of the SinGAN benchmark: the same layers and work as `cargo bench --bench singan`.

Builds the baseline SinGAN (MMGeneration layout: 5 conv-BN-LeakyReLU layers per stage, valid 3x3
convolutions, a 5-pixel zero frame, bicubic align_corners upsampling between stages) on the balloons
pyramid sizes, then times
  (a) one training iteration at the finest stage: 3 discriminator steps with the WGAN-GP penalty
      (create_graph=True) and 3 generator steps with the reconstruction loss;
  (b) generation through the whole pyramid at 1x and 2x width (eval mode, no gradients).
Weights are untrained; timings do not depend on their values.

Each workload's floating-point operations are counted once, outside the timed runs, with the
formulas of torch.utils.flop_counter.FlopCounterMode: the convolutions (forward, both gradients and the gradient
penalty's second-order gradient) and matrix products, 2 per multiply-add. Element-wise ops, batch
norm and resizing are not counted. With --pegan-output FILE (the output of `cargo bench --bench
singan`) the script ends with a table of both implementations' times, their ratio and GFLOP/s, which
divides the same count by each time.

Run: bash bench/run_singan.sh (creates bench/.venv with PyTorch from PyPI).
"""
import argparse
import os
import re
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

# Balloons pyramid (MMGeneration rule), stage 0 coarsest: (height, width).
SIZES = [(25, 33), (32, 43), (41, 55), (53, 71), (68, 91), (88, 117), (113, 150), (145, 193), (186, 248)]
PAD = 5


def width(stage):
    return min(32 * 2 ** (stage // 4), 128)


def block(cin, ch, cout, bn_tail_act):
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(cin if i == 0 else ch, ch, 3, bias=False), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(ch, cout, 3, bias=True)]
    if bn_tail_act:
        layers += [nn.Tanh()]
    return nn.Sequential(*layers)


generators = nn.ModuleList([block(3, width(s), 3, True) for s in range(len(SIZES))])
discriminators = nn.ModuleList([block(3, width(s), 1, False) for s in range(len(SIZES))])
noise_weights = [1.0] + [0.1] * (len(SIZES) - 1)


def generate(sizes, last, noises):
    prev = torch.zeros(1, 3, *sizes[0])
    for s in range(last + 1):
        x = F.pad(noises[s] * noise_weights[s], [PAD] * 4) + F.pad(prev, [PAD] * 4)
        g = generators[s](x) + prev
        if s < last:
            prev = F.interpolate(g, size=sizes[s + 1], mode="bicubic", align_corners=True)
    return g


def random_noises(sizes):
    return [torch.randn(1, 1 if s == 0 else 3, h, w) for s, (h, w) in enumerate(sizes)]


def gradient_penalty(d, real, fake):
    alpha = torch.rand(1, 1, 1, 1)
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = d(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def train_iteration(stage, real, fixed, opt_g, opt_d):
    d = discriminators[stage]
    for _ in range(3):
        opt_d.zero_grad()
        with torch.no_grad():
            fake = generate(SIZES, stage, random_noises(SIZES))
        loss = d(fake).mean() - d(real).mean() + 0.1 * gradient_penalty(d, real, fake)
        loss.backward()
        opt_d.step()
    for _ in range(3):
        opt_g.zero_grad()
        fake = generate(SIZES, stage, random_noises(SIZES))
        recon = generate(SIZES, stage, fixed)
        loss = -d(fake).mean() + 10 * F.mse_loss(recon, real)
        loss.backward()
        opt_g.step()


class FlopCount(TorchDispatchMode):
    """Sum of the FLOPs of every op that has a formula in FlopCounterMode's registry.

    FlopCounterMode itself cannot be used here: its module hooks make torch.autograd.grad raise on the
    gradient penalty's leaf input (PyTorch 2.15).
    """

    def __init__(self):
        super().__init__()
        self.formulas = FlopCounterMode(display=False).flop_registry
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(body):
    """Run `body` once and return its floating-point operations as FlopCount counts them."""
    with FlopCount() as counter:
        body()
    return counter.total


def read_pegan_times(path):
    """Return pegan's times in seconds from the output of `cargo bench --bench singan`, keyed as in main()."""
    patterns = {
        "training": r"training iteration .*: median ([0-9.]+) s",
        "generation 1x": r"generation at 1× width: median ([0-9.]+) s",
        "generation 2x": r"generation at 2× width: median ([0-9.]+) s",
    }
    with open(path, encoding="utf-8") as file:
        text = file.read()
    times = {}
    for key, pattern in patterns.items():
        match = re.search(pattern, text)
        if match is None:
            raise SystemExit(f"{path}: no line matching {pattern!r}; expected the output of cargo bench --bench singan")
        times[key] = float(match.group(1))
    return times


def print_comparison(rows, pegan_times):
    print()
    print("| workload | pegan s | PyTorch s | pegan / PyTorch | GFLOP counted | pegan GFLOP/s | PyTorch GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for key, label, torch_seconds, flops in rows:
        pegan_seconds = pegan_times[key]
        print(
            f"| {label} | {pegan_seconds:.3f} | {torch_seconds:.3f} | {pegan_seconds / torch_seconds:.2f} "
            f"| {flops / 1e9:.1f} | {flops / pegan_seconds / 1e9:.0f} | {flops / torch_seconds / 1e9:.0f} |"
        )


def main():
    parser = argparse.ArgumentParser(description="PyTorch side of the SinGAN CPU benchmark.")
    parser.add_argument(
        "--pegan-output",
        metavar="FILE",
        help="output of `cargo bench --bench singan` from the same run, for a side-by-side table",
    )
    args = parser.parse_args()
    pegan_times = read_pegan_times(args.pegan_output) if args.pegan_output else None
    threads = int(os.environ.get("PEGAN_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    stage = len(SIZES) - 1
    real = torch.rand(1, 3, *SIZES[stage]) * 2 - 1
    fixed = [torch.randn(1, 1, *SIZES[0])] + [torch.zeros(1, 3, h, w) for h, w in SIZES[1:]]
    generators.train()
    discriminators.train()
    opt_g = torch.optim.Adam(generators[stage].parameters(), lr=5e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminators[stage].parameters(), lr=5e-4, betas=(0.5, 0.999))
    print(f"torch {torch.__version__}, {threads} threads, finest stage {SIZES[stage][1]}x{SIZES[stage][0]}")

    train_iteration(stage, real, fixed, opt_g, opt_d)
    training_flops = count_flops(lambda: train_iteration(stage, real, fixed, opt_g, opt_d))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        train_iteration(stage, real, fixed, opt_g, opt_d)
        times.append(time.perf_counter() - start)
    training_seconds = statistics.median(times)
    print(
        f"training iteration (3 D + 3 G steps, gradient penalty): median {training_seconds:.3f} s, "
        f"{training_flops / 1e9:.1f} GFLOP, {training_flops / training_seconds / 1e9:.0f} GFLOP/s"
    )
    rows = [("training", "SinGAN training iteration, finest stage", training_seconds, training_flops)]
    # ru_maxrss is in KiB on Linux: the process's peak resident memory so far, training included.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory after training: {peak_mib:.0f} MiB")

    generators.eval()
    for factor in (1.0, 2.0):
        sizes = [(h, max(1, int(w * factor + 0.5))) for h, w in SIZES]
        with torch.no_grad():
            generate(sizes, stage, random_noises(sizes))
            flops = count_flops(lambda: generate(sizes, stage, random_noises(sizes)))
            times = []
            for _ in range(5):
                start = time.perf_counter()
                generate(sizes, stage, random_noises(sizes))
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        print(
            f"generation at {factor}x width: median {seconds:.3f} s, {flops / 1e9:.1f} GFLOP, "
            f"{flops / seconds / 1e9:.0f} GFLOP/s"
        )
        rows.append((f"generation {factor:.0f}x", f"SinGAN generation, {factor:.0f}× width", seconds, flops))

    if pegan_times is not None:
        print_comparison(rows, pegan_times)


if __name__ == "__main__":
    main()
