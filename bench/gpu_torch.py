"""PyTorch side of the GPU check: the timed work of `gpu_check` (core/examples/gpu_check) in PyTorch.

Times, on one CUDA device in strict float32 (TF32 off for matrix products and cuDNN convolutions,
as candle computes f32):
  singan_train_iteration_finest  baseline SinGAN at the finest balloons stage of the paper preset
                                 (186x248): 3 discriminator steps with the WGAN-GP penalty
                                 (create_graph=True) and 3 generator steps with the reconstruction loss;
  singan_generate_1x, _4x        generation through all 9 stages at 1x and 4x width (eval, no gradients);
  stylegan2_forward_{256,896}_b{1,16}
                                 StyleGAN2 config-f (channel multiplier 2) MS-PIE generator forward:
                                 mapping and synthesis at 256x256 and 896x896 (chosen scale 10),
                                 batch 1 and 16, noise maps made beforehand, no gradients.
The SinGAN layers are those of bench/singan_torch.py. The StyleGAN2 generator has pegan's config-f
layer shapes: modulated 3x3 convolutions with demodulation as one grouped convolution per layer (as
MMGeneration and rosinality's StyleGAN2 do), convolution then bilinear align_corners x2 resize in the
upsampling convolutions (MS-PIE `up_after_conv`), and ToRGB skips upsampled with the [1,3,3,1] FIR
filter. Its head is a fixed 512-channel grid standing in for the SPE head, which is computed once per
forward pass in pegan and costs little. Weights are random; timings do not depend on their values.

Each timing is the median of --runs runs after one warm-up run, each ended by torch.cuda.synchronize().

Run: python3 bench/gpu_torch.py --out torch.json [--pegan-report report.json --markdown comparison.md]
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Balloons pyramid of the paper preset (MMGeneration rule), stage 0 coarsest: (height, width).
SINGAN_SIZES = [(25, 33), (32, 43), (41, 55), (53, 71), (68, 91), (88, 117), (113, 150), (145, 193), (186, 248)]
SINGAN_PAD = 5


def singan_width(stage):
    return min(32 * 2 ** (stage // 4), 128)


def singan_block(cin, ch, cout, tanh):
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(cin if i == 0 else ch, ch, 3, bias=False), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(ch, cout, 3, bias=True)]
    if tanh:
        layers += [nn.Tanh()]
    return nn.Sequential(*layers)


class SinGan:
    def __init__(self, device):
        self.device = device
        stages = range(len(SINGAN_SIZES))
        self.generators = nn.ModuleList([singan_block(3, singan_width(s), 3, True) for s in stages]).to(device)
        self.discriminators = nn.ModuleList([singan_block(3, singan_width(s), 1, False) for s in stages]).to(device)
        self.noise_weights = [1.0] + [0.1] * (len(SINGAN_SIZES) - 1)

    def generate(self, sizes, last, noises):
        prev = torch.zeros(1, 3, *sizes[0], device=self.device)
        for s in range(last + 1):
            x = F.pad(noises[s] * self.noise_weights[s], [SINGAN_PAD] * 4) + F.pad(prev, [SINGAN_PAD] * 4)
            g = self.generators[s](x) + prev
            if s < last:
                prev = F.interpolate(g, size=sizes[s + 1], mode="bicubic", align_corners=True)
        return g

    def random_noises(self, sizes):
        return [torch.randn(1, 1 if s == 0 else 3, h, w, device=self.device) for s, (h, w) in enumerate(sizes)]

    def gradient_penalty(self, d, real, fake):
        alpha = torch.rand(1, 1, 1, 1, device=self.device)
        x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
        return ((grad.norm(2, dim=1) - 1) ** 2).mean()

    def train_iteration(self, stage, real, fixed, opt_g, opt_d):
        d = self.discriminators[stage]
        for _ in range(3):
            opt_d.zero_grad()
            with torch.no_grad():
                fake = self.generate(SINGAN_SIZES, stage, self.random_noises(SINGAN_SIZES))
            loss = d(fake).mean() - d(real).mean() + 0.1 * self.gradient_penalty(d, real, fake)
            loss.backward()
            opt_d.step()
        for _ in range(3):
            opt_g.zero_grad()
            fake = self.generate(SINGAN_SIZES, stage, self.random_noises(SINGAN_SIZES))
            recon = self.generate(SINGAN_SIZES, stage, fixed)
            loss = -d(fake).mean() + 10 * F.mse_loss(recon, real)
            loss.backward()
            opt_g.step()


def fused_leaky_relu(x, bias):
    shape = [1, -1] + [1] * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * math.sqrt(2)


class EqualLinear(nn.Module):
    def __init__(self, cin, cout, lr_mul=1.0, bias_init=0.0, activate=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(cin)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x):
        y = F.linear(x, self.weight * self.scale)
        if self.activate:
            return fused_leaky_relu(y, self.bias * self.lr_mul)
        return y + self.bias * self.lr_mul


def upfirdn_up2(x, kernel):
    """Upsamples by 2 with the 4x4 FIR kernel (already scaled by 4), padding (2, 1): StyleGAN2's skip upsampler."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    up = up.view(n, c, 2 * h, 2 * w)
    up = F.pad(up, [2, 1, 2, 1])
    weight = torch.flip(kernel, [0, 1]).view(1, 1, 4, 4).repeat(c, 1, 1, 1)
    return F.conv2d(up, weight, groups=c)


class ModulatedConv(nn.Module):
    def __init__(self, cin, cout, k, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1.0)
        self.scale = 1 / math.sqrt(cin * k * k)
        self.padding = k // 2
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x, style):
        n, cin, h, w = x.shape
        s = self.modulation(style).view(n, 1, cin, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4], keepdim=True) + 1e-8)
        cout = weight.shape[1]
        weight = weight.view(n * cout, cin, *weight.shape[3:])
        y = F.conv2d(x.reshape(1, n * cin, h, w), weight, padding=self.padding, groups=n)
        y = y.view(n, cout, *y.shape[2:])
        if self.upsample:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        return y


class StyleConv(nn.Module):
    def __init__(self, cin, cout, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv(cin, cout, 3, style_dim, upsample=upsample)
        self.noise_weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, style, noise):
        y = self.conv(x, style) + self.noise_weight * noise
        return fused_leaky_relu(y, self.bias)


class ToRgb(nn.Module):
    def __init__(self, cin, style_dim, kernel):
        super().__init__()
        self.conv = ModulatedConv(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.register_buffer("kernel", kernel)

    def forward(self, x, style, skip=None):
        y = self.conv(x, style) + self.bias
        if skip is not None:
            y = y + upfirdn_up2(skip, self.kernel)
        return y


def channels_c2(resolution):
    """Channel widths of config-f with channel multiplier 2, as pegan's ChannelTable."""
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}[resolution]


class StyleGan2ConfigF(nn.Module):
    def __init__(self, out_size=256, style_dim=512, num_mlps=8):
        super().__init__()
        layers = [EqualLinear(style_dim, style_dim, lr_mul=0.01, activate=True) for _ in range(num_mlps)]
        self.mapping = nn.Sequential(*layers)
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = torch.outer(k, k)
        kernel = kernel / kernel.sum() * 4
        self.head_channels = 512
        self.conv1 = StyleConv(self.head_channels, channels_c2(4), style_dim)
        self.to_rgb1 = ToRgb(channels_c2(4), style_dim, kernel)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.num_blocks = int(math.log2(out_size)) - 2
        for b in range(self.num_blocks):
            cin, cout = channels_c2(4 << b), channels_c2(8 << b)
            self.convs.append(StyleConv(cin, cout, style_dim, upsample=True))
            self.convs.append(StyleConv(cout, cout, style_dim))
            self.to_rgbs.append(ToRgb(cout, style_dim, kernel))
        self.num_latents = 2 * self.num_blocks + 2

    def noise_sides(self, head_side):
        sides = [head_side]
        side = head_side
        for _ in range(self.num_blocks):
            side *= 2
            sides += [side, side]
        return sides

    def forward(self, z, head, noises):
        w = self.mapping(z / torch.sqrt((z * z).mean(1, keepdim=True) + 1e-8))
        x = self.conv1(head.expand(z.shape[0], -1, -1, -1), w, noises[0])
        skip = self.to_rgb1(x, w)
        for b in range(self.num_blocks):
            x = self.convs[2 * b](x, w, noises[2 * b + 1])
            x = self.convs[2 * b + 1](x, w, noises[2 * b + 2])
            skip = self.to_rgbs[b](x, w, skip)
        return skip


def timed(device, runs, work):
    work()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        work()
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "min_ms": times[0], "runs": len(times)}


def singan_timings(device, runs, results):
    torch.manual_seed(0)
    model = SinGan(device)
    stage = len(SINGAN_SIZES) - 1
    model.generators.eval()
    for factor in (1, 4):
        sizes = [(h, max(1, int(w * factor + 0.5))) for h, w in SINGAN_SIZES]

        def generate():
            with torch.no_grad():
                model.generate(sizes, stage, model.random_noises(sizes))

        results[f"singan_generate_{factor}x"] = timed(device, runs, generate)

    model.generators.train()
    model.discriminators.train()
    real = torch.rand(1, 3, *SINGAN_SIZES[stage], device=device) * 2 - 1
    fixed = [torch.randn(1, 1, *SINGAN_SIZES[0], device=device)]
    fixed += [torch.zeros(1, 3, h, w, device=device) for h, w in SINGAN_SIZES[1:]]
    opt_g = torch.optim.Adam(model.generators[stage].parameters(), lr=5e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.discriminators[stage].parameters(), lr=5e-4, betas=(0.5, 0.999))
    results["singan_train_iteration_finest"] = timed(
        device, runs, lambda: model.train_iteration(stage, real, fixed, opt_g, opt_d)
    )


def stylegan2_timings(device, runs, results):
    torch.manual_seed(0)
    generator = StyleGan2ConfigF().to(device).eval()
    for chosen_scale in (0, 10):
        head_side = 4 + chosen_scale
        side = head_side * 2**generator.num_blocks
        head = torch.randn(1, generator.head_channels, head_side, head_side, device=device)
        for batch in (1, 16):
            z = torch.randn(batch, 512, device=device)
            noises = [torch.randn(batch, 1, s, s, device=device) for s in generator.noise_sides(head_side)]

            def forward():
                with torch.no_grad():
                    generator(z, head, noises)

            results[f"stylegan2_forward_{side}_b{batch}"] = timed(device, runs, forward)
            del noises
            torch.cuda.empty_cache()


def comparison_markdown(pegan, torch_results, torch_version, device_name):
    lines = [
        "# pegan against PyTorch on the same GPU",
        "",
        f"PyTorch {torch_version} on {device_name}, strict float32. Ratio = pegan / PyTorch (below 1: pegan faster).",
        "",
        "| name | pegan work | pegan ms | PyTorch ms | ratio |",
        "|---|---|---|---|---|",
    ]
    for entry in pegan.get("timings", []):
        name = entry["name"]
        theirs = torch_results.get(name)
        ratio = f"{entry['median_ms'] / theirs['median_ms']:.2f}" if theirs else "-"
        theirs_ms = f"{theirs['median_ms']:.2f}" if theirs else "-"
        lines.append(f"| {name} | {entry['what']} | {entry['median_ms']:.2f} | {theirs_ms} | {ratio} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the PyTorch timings")
    parser.add_argument("--device", default="cuda:0", help="CUDA device, e.g. cuda:0")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per timing, after one warm-up run")
    parser.add_argument("--pegan-report", help="report.json of gpu_check, to compare with")
    parser.add_argument("--markdown", help="Markdown file for the comparison table (needs --pegan-report)")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        sys.exit("gpu_torch.py: PyTorch sees no CUDA device; run it on a GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device)

    results = {}
    for section in (singan_timings, stylegan2_timings):
        try:
            section(device, args.runs, results)
        except Exception as error:  # noqa: BLE001 -- a failed section is reported, the others still run
            print(f"gpu_torch.py: {section.__name__} failed: {error}", file=sys.stderr)
            results[f"{section.__name__}_error"] = str(error)
    for name, value in results.items():
        if isinstance(value, dict):
            print(f"{name}: median {value['median_ms']:.2f} ms")

    document = {"torch": torch.__version__, "device": device_name, "tf32": False, "timings": results}
    with open(args.out, "w") as f:
        json.dump(document, f, indent=2)

    if args.pegan_report and args.markdown:
        with open(args.pegan_report) as f:
            pegan = json.load(f)
        timings = {k: v for k, v in results.items() if isinstance(v, dict)}
        with open(args.markdown, "w") as f:
            f.write(comparison_markdown(pegan, timings, torch.__version__, device_name))


if __name__ == "__main__":
    main()
