#!/usr/bin/env python3
"""Times the convolution workloads of core/benches/conv.rs in PyTorch on the CPU, side by side with pegan.

Setup (once): python3 -m venv bench/.venv && bench/.venv/bin/pip install torch numpy
Run from the repository root:
    bench/.venv/bin/python bench/conv_torch.py [--threads 2] [--runs 9] [--pegan] [--only NAME]

With --pegan the script builds and runs the Rust bench binary (candle's built-in convolution and
pegan's) for each workload right after PyTorch's runs, so both see the same machine state, and prints
one table. Each round times every workload once per implementation, as the median wall time of --runs
repetitions after one warm-up run. The table shows, in ms, the median over --rounds rounds and, in
brackets, the fastest round, which other processes on a shared machine disturb least.
"""

import argparse
import re
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

# Same shapes as WORKLOADS in core/benches/conv.rs:
# (name, batch, height, width, channels along the stack, padding, stride-2 transposed convolutions)
WORKLOADS = [
    ("singan_block_32ch_250x188", 1, 260, 198, [3, 32, 32, 32, 32, 3], 0, False),
    ("singan_block_128ch_248x186", 1, 258, 196, [3, 128, 128, 128, 128, 3], 0, False),
    ("conv3x3_64to64_256sq_b1", 1, 256, 256, [64, 64], 1, False),
    ("conv3x3_512to512_16sq_b4", 4, 16, 16, [512, 512], 1, False),
    ("convT3x3s2_512to512_16sq_b1", 1, 16, 16, [512, 512], 0, True),
]


def forward_flops(batch, height, width, channels, padding, transposed):
    """Counts the multiply-adds of the forward pass, twice; a transposed convolution counts its input pixels."""
    flops, h, w = 0.0, height, width
    for c_in, c_out in zip(channels, channels[1:]):
        if transposed:
            flops += 2.0 * batch * c_in * c_out * 9 * h * w
            h, w = 2 * h + 1, 2 * w + 1
            continue
        h, w = h + 2 * padding - 2, w + 2 * padding - 2
        flops += 2.0 * batch * c_in * c_out * 9 * h * w
    return flops


def median_ms(runs, body):
    body()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        body()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_torch(workload, runs):
    name, batch, height, width, channels, padding, transposed = workload
    torch.manual_seed(0)
    x = torch.randn(batch, channels[0], height, width, requires_grad=True)
    weights = [
        (torch.randn(*((c_in, c_out) if transposed else (c_out, c_in)), 3, 3) / (9 * c_in) ** 0.5).requires_grad_()
        for c_in, c_out in zip(channels, channels[1:])
    ]

    def forward():
        h = x
        for w in weights:
            h = F.conv_transpose2d(h, w, stride=2) if transposed else F.conv2d(h, w, padding=padding)
        return h

    with torch.no_grad():
        r = torch.randn_like(forward())

    def forward_only():
        with torch.no_grad():
            forward()

    def forward_backward():
        x.grad = None
        for w in weights:
            w.grad = None
        (forward() * r).sum().backward()

    return median_ms(runs, forward_only), median_ms(runs, forward_backward)


def min_ms(runs, body):
    body()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        body()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def time_torch_per_op(workload, runs):
    """Returns {(layer label, op): fastest ms} for every layer's forward, input gradient and weight gradient."""
    _, batch, height, width, channels, padding, transposed = workload
    results = {}
    if transposed:
        # The per-layer table, like the Rust bench's, covers stride-1 convolutions only.
        return results
    torch.manual_seed(0)
    x = torch.randn(batch, channels[0], height, width)
    with torch.no_grad():
        for c_in, c_out in zip(channels, channels[1:]):
            w = torch.randn(c_out, c_in, 3, 3) / (9 * c_in) ** 0.5
            y = F.conv2d(x, w, padding=padding)
            label = f"{c_in}->{c_out} {y.shape[2]}x{y.shape[3]}"

            def backward(mask, x=x, w=w, y=y):
                torch.ops.aten.convolution_backward(
                    y, x, w, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], 1, mask
                )

            results[(label, "conv2d")] = min_ms(runs, lambda x=x, w=w: F.conv2d(x, w, padding=padding))
            results[(label, "input_grad")] = min_ms(runs, lambda: backward([True, False, False]))
            results[(label, "weight_grad")] = min_ms(runs, lambda: backward([False, True, False]))
            x = y
    return results


def time_pegan_per_op(binary, name, threads, runs):
    """Returns {(layer label, op): fastest ms} from the Rust bench's per-layer table for one workload."""
    output = subprocess.run(
        [binary, "--only", name, "--threads", str(threads), "--runs", str(runs), "--per-op-only"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    results = {}
    for line in output.splitlines():
        match = re.match(r"\|\s+layer \d+ (\S+ \S+) \| (\w+) \| \| ([\d.]+) \|", line)
        if match:
            results[(match.group(1), match.group(2))] = float(match.group(3))
    return results


def pegan_bench_binary():
    """Builds the Rust bench and returns the path of its executable."""
    output = subprocess.run(
        ["cargo", "bench", "-p", "pegan-core", "--bench", "conv", "--no-run", "--message-format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    executables = re.findall(r'"executable":"([^"]+)"', output)
    binaries = [path for path in executables if "/conv-" in path]
    if not binaries:
        raise RuntimeError("cargo bench --no-run did not report the conv bench executable")
    return binaries[-1]


def time_pegan(binary, name, threads, runs, skip_candle):
    """Returns {pass: (candle_ms, pegan_ms)} from the Rust bench's table for one workload."""
    output = subprocess.run(
        [binary, "--only", name, "--threads", str(threads), "--runs", str(runs)]
        + (["--pegan-only"] if skip_candle else []),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    results = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] == name:
            results[cells[1]] = (float(cells[2]), float(cells[3]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for PyTorch and pegan (default 2)")
    parser.add_argument("--runs", type=int, default=9, help="timed repetitions per round (default 9)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of all implementations (default 3)")
    parser.add_argument("--pegan", action="store_true", help="also run the Rust bench for each workload")
    parser.add_argument("--skip-candle", action="store_true", help="with --pegan, skip candle's slow built-in convolution")
    parser.add_argument("--per-op", action="store_true", help="also time each layer's three convolutions on their own")
    parser.add_argument("--only", help="keep the workloads whose name contains this text")
    args = parser.parse_args()
    workloads = [w for w in WORKLOADS if args.only is None or args.only in w[0]]

    torch.set_num_threads(args.threads)
    binary = pegan_bench_binary() if args.pegan else None
    passes = ["forward", "forward+backward"]
    # timings[(workload, pass, implementation)] = one median per round
    timings = {}
    for _ in range(args.rounds):
        for workload in workloads:
            name = workload[0]
            for pass_name, ms in zip(passes, time_torch(workload, args.runs)):
                timings.setdefault((name, pass_name, "torch"), []).append(ms)
            pegan = time_pegan(binary, name, args.threads, args.runs, args.skip_candle) if binary else {}
            for pass_name in passes:
                candle_ms, pegan_ms = pegan.get(pass_name, (float("nan"), float("nan")))
                timings.setdefault((name, pass_name, "candle"), []).append(candle_ms)
                timings.setdefault((name, pass_name, "pegan"), []).append(pegan_ms)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of "
        f"median of {args.runs} runs; ms as median over rounds [fastest round]"
    )
    print("| workload | pass | PyTorch ms | candle ms | pegan ms | pegan / PyTorch | PyTorch GFLOP/s | pegan GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for workload in workloads:
        name = workload[0]
        flops = forward_flops(*workload[1:])
        for pass_name, pass_flops in zip(passes, [flops, 3 * flops]):
            figures = {
                implementation: (statistics.median(values), min(values))
                for implementation in ["torch", "candle", "pegan"]
                for values in [timings[(name, pass_name, implementation)]]
            }
            cells = " | ".join(f"{median:.1f} [{fastest:.1f}]" for median, fastest in figures.values())
            torch_ms, pegan_ms = figures["torch"][0], figures["pegan"][0]
            print(
                f"| {name} | {pass_name} | {cells} | {pegan_ms / torch_ms:.2f} "
                f"| {pass_flops / torch_ms / 1e6:.0f} | {pass_flops / pegan_ms / 1e6:.0f} |"
            )

    if not args.per_op:
        return
    print()
    print("Per layer, fastest of --runs runs in the last round, ms")
    print("| workload | layer | op | PyTorch ms | pegan ms | pegan / PyTorch |")
    print("|---|---|---|---|---|---|")
    for workload in workloads:
        name = workload[0]
        torch_ops = time_torch_per_op(workload, args.runs)
        pegan_ops = time_pegan_per_op(binary, name, args.threads, args.runs) if binary else {}
        for (label, op), torch_ms in torch_ops.items():
            pegan_ms = pegan_ops.get((label, op), float("nan"))
            print(f"| {name} | {label} | {op} | {torch_ms:.2f} | {pegan_ms:.2f} | {pegan_ms / torch_ms:.2f} |")


if __name__ == "__main__":
    main()
