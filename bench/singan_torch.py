"""PyTorch side of the SinGAN benchmark: the same layers and work as `cargo bench --bench singan`.

Builds the baseline SinGAN (MMGeneration layout: 5 conv-BN-LeakyReLU layers per stage, valid 3x3
convolutions, a 5-pixel zero frame, bicubic align_corners upsampling between stages) on the balloons
pyramid sizes, then times
  (a) one training iteration at the finest stage: 3 discriminator steps with the WGAN-GP penalty
      (create_graph=True) and 3 generator steps with the reconstruction loss;
  (b) generation through the whole pyramid at 1x and 2x width (eval mode, no gradients).
Weights are untrained; timings do not depend on their values.

Run: bash bench/run_singan.sh (creates bench/.venv with PyTorch from PyPI).
"""
import os
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def main():
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
    times = []
    for _ in range(3):
        start = time.perf_counter()
        train_iteration(stage, real, fixed, opt_g, opt_d)
        times.append(time.perf_counter() - start)
    print(f"training iteration (3 D + 3 G steps, gradient penalty): median {statistics.median(times):.3f} s")
    # ru_maxrss is in KiB on Linux: the process's peak resident memory so far, training included.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory after training: {peak_mib:.0f} MiB")

    generators.eval()
    for factor in (1.0, 2.0):
        sizes = [(h, max(1, int(w * factor + 0.5))) for h, w in SIZES]
        with torch.no_grad():
            generate(sizes, stage, random_noises(sizes))
            times = []
            for _ in range(5):
                start = time.perf_counter()
                generate(sizes, stage, random_noises(sizes))
                times.append(time.perf_counter() - start)
        print(f"generation at {factor}x width: median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
