"""How much arithmetic an exact refined occlusion map needs, against what this CPU can do.

Counts the convolution multiply-adds of one refined conditional-occlusion call on the shipped
default model (the Explorer's request: patch 28, stride 4, both images of the pair at the model's
112 px), per convolution shape, as a direct convolution would do them, and which of them the
engine runs by Winograd's algorithm, F(4x4, 3x3) or F(7x7, 3x3) (with the multiplications that actually
does).
It measures in the same run the fp32 throughput this machine reaches: a large matrix multiply (the
best case for the CPU's vector units) and 3x3 convolutions of the two late stages at the engine's
batch size, with the default (oneDNN) kernels and with NNPACK's Winograd kernels where PyTorch has
them. The lower bound on the refined map's time is each shape's work at the best rate measured.

    python benchmarks/occlusion_work.py --threads 2 --out benchmarks/results/occlusion_work.md
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from bench_joint import median_seconds  # noqa: E402

from ssl_widgets.attr import ConditionalOcclusion, PairAttribution  # noqa: E402
from ssl_widgets.attr._occlusion_engine import winograd as _winograd  # noqa: E402
from ssl_widgets.data import make_pair  # noqa: E402
from ssl_widgets.models import SSLModel, load_model  # noqa: E402


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads``, ``--model``, ``--patch`` and ``--stride`` of the Explorer's refined request."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="tiny-simclr")
    parser.add_argument("--patch", type=int, default=28)
    parser.add_argument("--stride", type=int, default=4)


def refined_request(args: argparse.Namespace) -> tuple[SSLModel, Callable[[], PairAttribution]]:
    """Set the thread count and load the model: the model and its refined conditional-occlusion call on
    the ``chelsea`` pair, already run once (so the private trunk copy is built)."""
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    x1, x2 = make_pair("chelsea", "aug", size=model.input_size, seed=0)
    method = ConditionalOcclusion(model)

    def call() -> PairAttribution:
        return method.attribute((x1, x2), args.patch, args.stride)

    call()
    return model, call


def _nnpack_runs(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether PyTorch's NNPACK convolution runs here (it can be built in and still fail at run time)."""
    if not torch._nnpack_available():
        return False
    try:
        torch._nnpack_spatial_convolution(x[:2], w, None, [1, 1], [1, 1])
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def counting_convolutions(direct: collections.Counter, winograd: collections.Counter, products: collections.Counter):
    """Count convolution multiply-adds per weight shape while the context is open: ``F.conv2d``'s in
    ``direct``; the Winograd path's as a direct convolution would do them in ``winograd`` and the
    multiplications it does (``(m+2)^2`` per ``m x m`` output tile and channel pair: 36 for F(4x4), 81 for
    F(7x7)) in ``products``."""
    original_conv, original_winograd = F.conv2d, _winograd.winograd_conv3x3
    lock = threading.Lock()  # the batches run in worker threads

    def counted(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        out = original_conv(x, weight, bias, stride, padding, dilation, groups)
        with lock:
            direct[tuple(weight.shape)] += out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        return out

    def counted_winograd(x, u, bias):
        out = original_winograd(x, u, bias)
        shape = (u.shape[2], u.shape[1], 3, 3)
        m = _winograd.tile_of(u)
        tiles = x.shape[0] * -(-out.shape[2] // m) * -(-out.shape[3] // m)
        with lock:
            winograd[shape] += out.numel() * u.shape[1] * 9
            products[shape] += tiles * u.shape[0] * u.shape[1] * u.shape[2]  # u.shape[0] = (m+2)^2 positions
        return out

    F.conv2d, _winograd.winograd_conv3x3 = counted, counted_winograd
    try:
        yield
    finally:
        F.conv2d, _winograd.winograd_conv3x3 = original_conv, original_winograd


def main() -> int:
    parser = argparse.ArgumentParser()
    add_request_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args()
    model, refined_call = refined_request(args)
    direct, winograd, products = collections.Counter(), collections.Counter(), collections.Counter()
    with counting_convolutions(direct, winograd, products):
        refined_call()
    counts = direct + winograd
    total = sum(counts.values())
    refined = median_seconds(refined_call, args.repeats)

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = 2048 ** 3 / median_seconds(lambda: a @ b, args.repeats)
    rows = [("large fp32 matrix multiply (2048^3)", "", gemm)]
    convs = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
             and m.stride == (1, 1)]
    best_by_width: dict[int, float] = {}
    notes: list[str] = []
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
        if _nnpack_runs(x, w):
            rates["NNPACK (Winograd; multiply-adds counted as direct)"] = macs / median_seconds(
                lambda x=x, w=w: torch._nnpack_spatial_convolution(x, w, None, [1, 1], [1, 1]), args.repeats)
        else:
            notes.append(f"NNPACK: not measured for the {side}x{side} stage (PyTorch reports it available, "
                         "but its convolution failed on this machine)")
        tile = _winograd.choose_tile(side, side)
        if _winograd.eligible(w, (1, 1), (1, 1), 1) and tile is not None:
            run = _winograd.conv_runner(w, None, (1, 1), (1, 1), 1)
            padded = F.pad(xc, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
            with _winograd.workspace():
                rates[f"ssl_widgets' Winograd F({tile}x{tile}, 3x3) (the engine's; counted as direct)"] = macs / median_seconds(
                    lambda padded=padded, run=run: run(padded), args.repeats)
        for kernel, rate in rates.items():
            rows.append((f"{stage}: 3x3, {width} channels, 128 copies at {side}x{side}", kernel, rate))
        best_by_width[width] = max(rates.values())
    fastest = max(best_by_width.values())
    bound = sum(macs / best_by_width.get(shape[1], fastest) for shape, macs in counts.items())
    def run_by(shape: tuple[int, ...]) -> str:
        if not winograd[shape]:
            return "direct"
        if winograd[shape] == counts[shape]:
            return f"Winograd: {products[shape] / 1e9:.1f} G multiplications"
        return f"both ({winograd[shape] / 1e9:.1f} G by Winograd)"

    lines = [f"model={args.model} threads={args.threads} patch={args.patch} stride={args.stride} "
             f"input={model.input_size}px (medians of {args.repeats})", "",
             "| convolution weight shape | multiply-adds as a direct convolution (G) | run by |", "|---|---|---|"]
    lines += [f"| {tuple(shape)} | {macs / 1e9:.1f} | {run_by(shape)} |" for shape, macs in counts.most_common()]
    lines += [f"| **total, one refined call** | **{total / 1e9:.1f}** | "
              f"{sum(products.values()) / 1e9:.1f} G multiplications by Winograd in place of "
              f"{sum(winograd.values()) / 1e9:.1f} G |", "",
              "| throughput measured here | kernel | G multiply-adds/s | time for the total |", "|---|---|---|---|"]
    lines += [f"| {name} | {kernel} | {rate / 1e9:.1f} | {total / rate:.2f} s |" for name, kernel, rate in rows]
    lines += ["", f"Refined call measured: {refined:.2f} s. Convolutions alone, each stage at the best kernel "
              f"measured for it (the other stages at the fastest rate): at least {bound:.2f} s."]
    lines += [""] + notes if notes else []
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
