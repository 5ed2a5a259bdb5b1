"""How much arithmetic an exact refined occlusion map needs, against what this CPU can do.

Counts the convolution multiply-adds that the exact incremental engine performs for one refined
conditional-occlusion call on the shipped default model (the Explorer's request: patch 28,
stride 4, both images of the pair at the model's 112 px), per convolution shape, and measures in
the same run the fp32 throughput this machine reaches: a large matrix multiply (the best case for
the CPU's vector units) and the deep stage's own convolution at the engine's batch size, with the
default (oneDNN) kernels and with NNPACK's Winograd kernels where PyTorch has them. The lower bound
on the refined map's time is the multiply-adds divided by the best throughput.

    python benchmarks/occlusion_work.py --threads 2 --out benchmarks/results/occlusion_work.md
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from bench_joint import median_seconds  # noqa: E402

from ssl_widgets.attr import ConditionalOcclusion  # noqa: E402
from ssl_widgets.data import make_pair  # noqa: E402
from ssl_widgets.models import load_model  # noqa: E402


@contextlib.contextmanager
def counting_convolutions(counter: collections.Counter):
    """Count ``F.conv2d``'s multiply-adds per weight shape while the context is open."""
    original = F.conv2d

    def counted(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        out = original(x, weight, bias, stride, padding, dilation, groups)
        counter[tuple(weight.shape)] += out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        return out

    F.conv2d = counted
    try:
        yield counter
    finally:
        F.conv2d = original


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="tiny-simclr")
    parser.add_argument("--patch", type=int, default=28)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    x1, x2 = make_pair("chelsea", "aug", size=model.input_size, seed=0)
    method = ConditionalOcclusion(model)
    method.attribute((x1, x2), args.patch, args.stride)  # builds the private trunk copy once
    counts: collections.Counter = collections.Counter()
    with counting_convolutions(counts):
        method.attribute((x1, x2), args.patch, args.stride)
    total = sum(counts.values())
    refined = median_seconds(lambda: method.attribute((x1, x2), args.patch, args.stride), args.repeats)

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = 2048 ** 3 / median_seconds(lambda: a @ b, args.repeats)
    rows = [("large fp32 matrix multiply (2048^3)", "", gemm)]
    convs = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
             and m.stride == (1, 1)]
    best_by_width: dict[int, float] = {}
    for stage, divisor in (("deep stage (last)", 16), ("stage before it", 8)):
        width = convs[-1].in_channels // (16 // divisor)
        conv = next(m for m in reversed(convs) if m.in_channels == width)
        side = model.input_size // divisor
        x = torch.randn(128, width, side, side).relu()
        w = conv.weight.detach().clone()
        macs = 128 * side * side * width * width * 9
        xc, wc = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        rates = {"oneDNN, channels-last (the engine's layout)":
                 macs / median_seconds(lambda xc=xc, wc=wc: F.conv2d(xc, wc, None, 1, 1), args.repeats)}
        if torch._nnpack_available():
            rates["NNPACK (Winograd; multiply-adds counted as direct)"] = macs / median_seconds(
                lambda x=x, w=w: torch._nnpack_spatial_convolution(x, w, None, [1, 1], [1, 1]), args.repeats)
        for kernel, rate in rates.items():
            rows.append((f"{stage}: 3x3, {width} channels, 128 copies at {side}x{side}", kernel, rate))
        best_by_width[width] = max(rates.values())
    fastest = max(best_by_width.values())
    bound = sum(macs / best_by_width.get(shape[1], fastest) for shape, macs in counts.items())
    lines = [f"model={args.model} threads={args.threads} patch={args.patch} stride={args.stride} "
             f"input={model.input_size}px (medians of {args.repeats})", "",
             "| convolution weight shape | multiply-adds (G) |", "|---|---|"]
    lines += [f"| {tuple(shape)} | {macs / 1e9:.1f} |" for shape, macs in counts.most_common()]
    lines += [f"| **total, one refined call** | **{total / 1e9:.1f}** |", "",
              "| throughput measured here | kernel | G multiply-adds/s | time for the total |", "|---|---|---|---|"]
    lines += [f"| {name} | {kernel} | {rate / 1e9:.1f} | {total / rate:.2f} s |" for name, kernel, rate in rows]
    lines += ["", f"Refined call measured: {refined:.2f} s. Convolutions alone, each stage at the best kernel "
              f"measured for it (the other stages at the fastest rate): at least {bound:.2f} s."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
