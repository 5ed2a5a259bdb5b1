"""Speed of the methods, and of occlusion against the authors' own loop, in one run on one model.

Occlusion (conditional w64/s8 and context-agnostic) is timed side by side with the authors' loop
shape exactly (``authors_loops.py``: all occluded copies stacked first, batch 32, ``model()`` per
batch, both images), on the same weights given to ``SSLModel`` in two trunk styles: the torchvision
``nn.Sequential(*children[:-2])`` most users build, and the package's ``ResNetTrunk``. It prints
the ratio of medians and the largest map difference. ``--methods`` also times every other method
of the package (ours only; there is no authors' code to run for them here).

    python benchmarks/bench_methods.py                               # CPU, ResNet-50 224 px, 2 threads
    python benchmarks/bench_methods.py --device cuda --methods --vit --quick --out results/gpu
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # run from a checkout without installing, too
import authors_loops

from ssl_widgets.attr import (
    AveragedTransforms,
    ConditionalOcclusion,
    ContextAgnosticOcclusion,
    PairInputXGradient,
    PairSmoothGrad,
    PairwiseOcclusion,
    PixelInvariance,
)
from ssl_widgets.attr.cam import cam_variants
from ssl_widgets.models import IMAGENET_MEAN, IMAGENET_STD, SSLModel
from ssl_widgets.models.architectures import ResNetTrunk, mlp_head


def randomize_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, as in a trained network."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def resnet50_models(device: str) -> dict[str, SSLModel]:
    """The same random ResNet-50 weights in the two trunk styles."""
    import torchvision
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    net = randomize_bn(torchvision.models.resnet50()).eval()
    head = mlp_head([2048, 2048, 128]).eval()
    sequential = nn.Sequential(*list(net.children())[:-2])
    package = ResNetTrunk(Bottleneck, [3, 4, 6, 3])
    package.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})
    return {style: SSLModel(trunk, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, name=f"resnet50-{style}").eval()
            .to(device) for style, trunk in (("Sequential", sequential), ("ResNetTrunk", package))}


class _ViTTrunk(nn.Module):
    """A timm ViT as a trunk: patch tokens as a ``(B, D, h, w)`` map (mean-pooled by ``SSLModel``)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x):
        tokens = self.vit.forward_features(x)[:, getattr(self.vit, "num_prefix_tokens", 1):]
        side = int(tokens.shape[1] ** 0.5)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def vit_model(device: str, size: int = 224) -> SSLModel:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=size).eval()
    return SSLModel(_ViTTrunk(vit), None, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="vit-s16").eval().to(device)


def cpu_name() -> str:
    """The CPU model (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str):
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def max_abs_diff(a, b) -> float:
    return max(float((x.detach().float().cpu().reshape(-1) - y.detach().float().cpu().reshape(-1)).abs().max())
               for x, y in zip(a, b))


def occlusion_rows(models, x1, x2, device, repeats, per_eval, precision_fast, variants=("conditional",
                                                                                     "context-agnostic")):
    rows = []
    for style, model in models.items():
        cases = [
            ("conditional-occlusion w64/s8",
             lambda m=model: authors_loops.conditional_occlusion(m, x1, x2),
             lambda m=model, p="exact": ConditionalOcclusion(m).attribute((x1, x2), 64, 8, grid=True,
                                                                          perturbations_per_eval=per_eval,
                                                                          precision=p)),
            ("context-agnostic-occlusion w64/s8",
             lambda m=model: authors_loops.context_agnostic_occlusion(m, x1, x2),
             lambda m=model, p="exact": ContextAgnosticOcclusion(m).attribute((x1, x2), 64, 8, grid=True,
                                                                              perturbations_per_eval=per_eval,
                                                                              precision=p)),
        ]
        for name, authors, ours in cases:
            if not any(name.startswith(v + "-occlusion") for v in variants):
                continue
            t_a, times_a, maps_a = timed(authors, repeats, device)
            t_o, times_o, maps_o = timed(ours, repeats, device)
            row = {"method": name, "trunk": style, "authors_s": t_a, "ours_s": t_o, "ratio": t_a / t_o,
                   "max_abs_diff": max_abs_diff([m[0] for m in maps_o], maps_a), "authors_times": times_a,
                   "ours_times": times_o}
            if precision_fast:
                t_f, _, maps_f = timed(lambda ours=ours: ours(p="fast"), repeats, device)
                row.update(fast_s=t_f, fast_ratio=t_a / t_f, fast_max_abs_diff=max_abs_diff(maps_f, maps_o))
            rows.append(row)
            fast = (f" | fast {row['fast_s']:.2f} s ({row['fast_ratio']:.2f}x, diff {row['fast_max_abs_diff']:.1e})"
                    if precision_fast else "")
            print(f"| {name} | {style} | {t_a:.2f} | {t_o:.2f} | {t_a / t_o:.2f}x | {row['max_abs_diff']:.1e}{fast} |",
                  flush=True)
    return rows


def method_cases(model: SSLModel, x1, x2, quick: bool):
    xt = (x1 * 0.6 + 0.2).clamp(0, 1)  # a photometric transform
    gen = lambda: torch.Generator().manual_seed(1)
    return {
        "conditional-occlusion w64/s8": lambda: ConditionalOcclusion(model).attribute((x1, x2), 64, 8),
        "context-agnostic-occlusion w64/s8": lambda: ContextAgnosticOcclusion(model).attribute((x1, x2), 64, 8),
        "pairwise-occlusion (100 erasings)": lambda: PairwiseOcclusion(model).attribute((x1, x2), generator=gen()),
        "grad-cam + 3 interaction-cams": lambda: cam_variants(
            model, (x1, x2), ["grad-cam", "interaction-cam", "interaction-cam:max", "interaction-cam:attention"]),
        "averaged-transforms (10 steps)": lambda: AveragedTransforms(model).attribute((x1, xt)),
        "input-x-gradient": lambda: PairInputXGradient(model).attribute((x1, x2)),
        "smoothgrad (50 samples)": lambda: PairSmoothGrad(model).attribute((x1, x2), generator=gen()),
        "pixel-invariance (small: 200 samples, 100 epochs)": lambda: PixelInvariance(model).attribute(
            x1, n_samples=200, size=32, epochs=100, generator=gen()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each timing (median reported)")
    parser.add_argument("--occlusion-repeats", type=int, default=1, help="repeats of the occlusion comparisons")
    parser.add_argument("--quick", action="store_true", help="one repeat each, Sequential trunk only, no fast mode")
    parser.add_argument("--no-compare", action="store_true", help="skip the authors' loop comparison")
    parser.add_argument("--methods", action="store_true", help="also time every method of the package")
    parser.add_argument("--vit", action="store_true", help="also time the methods on a timm ViT-S/16")
    parser.add_argument("--fast", action="store_true", help="also time precision='fast' occlusion")
    parser.add_argument("--cases", default="conditional,context-agnostic", help="occlusion variants to compare")
    parser.add_argument("--trunks", default="Sequential,ResNetTrunk", help="trunk styles to compare")
    parser.add_argument("--per-eval", type=int, default=None, help="perturbations_per_eval (default: tuned)")
    parser.add_argument("--out", default=None, help="write results.json and results.md into this directory")
    parser.add_argument("--allow-tf32", action="store_true",
                        help="on CUDA, let cuDNN and matrix products round to TF32 (PyTorch's default for "
                             "convolutions); off by default, so that both sides compute in float32 and the maps can "
                             "be compared to 1e-4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
    if args.quick:
        args.repeats = args.occlusion_repeats = 1
    models = resnet50_models(device)
    styles = ["Sequential"] if args.quick else args.trunks.split(",")
    models = {style: models[style] for style in styles}
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(1, 3, args.size, args.size, generator=g).to(device)
    x2 = torch.rand(1, 3, args.size, args.size, generator=g).to(device)
    header = (f"device={device} ({torch.cuda.get_device_name() if device.startswith('cuda') else cpu_name()})"
              f" threads={args.threads} size={args.size} torch={torch.__version__} model=ResNet-50 (random weights)"
              + (f" tf32={'on' if args.allow_tf32 else 'off'}" if device.startswith("cuda") else ""))
    print(header, flush=True)
    results = {"header": header, "args": vars(args), "occlusion": [], "methods": []}
    lines = [header, ""]
    if not args.no_compare:
        print("| method | trunk | authors' loop (s) | ssl_widgets (s) | ratio | max abs map difference |")
        print("|---|---|---|---|---|---|")
        rows = occlusion_rows(models, x1, x2, device, args.occlusion_repeats, args.per_eval, args.fast,
                              args.cases.split(","))
        results["occlusion"] = rows
        lines += ["| method | trunk | authors' loop (s) | ssl_widgets (s) | ratio | max abs map difference |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['trunk']} | {r['authors_s']:.2f} | {r['ours_s']:.2f} | {r['ratio']:.2f}x "
                  f"| {r['max_abs_diff']:.1e} |" for r in rows]
        lines += [f"| {r['method']} (precision='fast') | {r['trunk']} | {r['authors_s']:.2f} | {r['fast_s']:.2f} | "
                  f"{r['fast_ratio']:.2f}x | {r['fast_max_abs_diff']:.1e} vs exact |" for r in rows if "fast_s" in r]
    if args.methods or args.vit:
        resnet = models.get("Sequential", next(iter(models.values())))
        targets = ([("ResNet-50", resnet)] if args.methods else []) + (
            [("ViT-S/16", vit_model(device, args.size))] if args.vit else [])
        print("\n| model | method | seconds (median) |\n|---|---|---|")
        lines += ["", "| model | method | seconds (median) |", "|---|---|---|"]
        for label, model in targets:
            for name, fn in method_cases(model, x1, x2, args.quick).items():
                fn()  # warm-up (cuDNN autotuning, private trunk copy)
                t, times, _ = timed(fn, args.repeats, device)
                results["methods"].append({"model": label, "method": name, "seconds": t, "times": times})
                print(f"| {label} | {name} | {t:.3f} |", flush=True)
                lines.append(f"| {label} | {name} | {t:.3f} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
