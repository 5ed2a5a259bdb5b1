"""Speed of the package's methods against plain re-implementations of the paper's loops.

Both run side by side in one process on the same model and pair; the maps are compared (they
must agree to float tolerance) and the ratio of medians is reported.

    python benchmarks/bench_methods.py                      # ResNet-50 at 224 px, 2 threads, CPU
    python benchmarks/bench_methods.py --device cuda --only conditional-occlusion
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # run from a checkout without installing, too
import reference as ref  # noqa: E402

from ssl_widgets.attr import AveragedTransforms, ConditionalOcclusion, ContextAgnosticOcclusion, PairSmoothGrad  # noqa: E402
from ssl_widgets.attr.cam import cam_variants  # noqa: E402
from ssl_widgets.models import IMAGENET_MEAN, IMAGENET_STD, SSLModel  # noqa: E402
from ssl_widgets.models.architectures import mlp_head, resnet50_trunk  # noqa: E402


def build_model(device: str) -> SSLModel:
    torch.manual_seed(0)
    trunk = resnet50_trunk()
    for module in trunk.modules():  # non-trivial BN statistics, as in a trained network
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    model = SSLModel(trunk, mlp_head([2048, 2048, 128]), mean=IMAGENET_MEAN, std=IMAGENET_STD, name="resnet50-random")
    return model.eval().to(device)


def timed(fn, repeats: int, device: str):
    times, out = [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def max_rel_diff(a, b) -> float:
    return max(float((x.cpu() - y.cpu()).abs().max() / (y.abs().max().cpu() + 1e-12)) for x, y in zip(a, b))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast methods")
    parser.add_argument("--occlusion-repeats", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated subset")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    model = build_model(device)
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(1, 3, args.size, args.size, generator=g).to(device)
    x2 = torch.rand(1, 3, args.size, args.size, generator=g).to(device)
    xt = (x1 * 0.6 + 0.2).clamp(0, 1)  # a photometric transform
    occ_batch = 16 if device == "cpu" else 128
    cases = {
        "conditional-occlusion": (
            lambda: ref.reference_conditional_occlusion(model, x1, x2),
            lambda: ConditionalOcclusion(model).attribute((x1, x2), grid=True, perturbations_per_eval=occ_batch),
            args.occlusion_repeats),
        "context-agnostic-occlusion": (
            lambda: ref.reference_context_agnostic_occlusion(model, x1, x2),
            lambda: ContextAgnosticOcclusion(model).attribute((x1, x2), grid=True, perturbations_per_eval=occ_batch),
            args.occlusion_repeats),
        "grad-cam + 3 interaction-cams": (
            lambda: [m for pair in ref.reference_cams(model, x1, x2).values() for m in pair],
            lambda: [m[0] for r in cam_variants(model, (x1, x2), ["grad-cam", "interaction-cam", "interaction-cam:max",
                                                                   "interaction-cam:attention"]).values() for m in r],
            args.repeats),
        "averaged-transforms (10 steps)": (
            lambda: ref.reference_averaged_transforms(model, x1, xt),
            lambda: AveragedTransforms(model).attribute((x1, xt)),
            args.repeats),
        "smoothgrad (50 samples)": (
            lambda: ref.reference_smoothgrad(model, x1, x2, generator=torch.Generator().manual_seed(1)),
            lambda: PairSmoothGrad(model).attribute((x1, x2), generator=torch.Generator().manual_seed(1)),
            args.repeats),
    }
    only = set(args.only.split(",")) if args.only else None
    results = []
    print(f"device={device} threads={args.threads} size={args.size} model=ResNet-50 (random weights)")
    print(f"| method | reference (s) | ssl_widgets (s) | speed-up | max rel. map difference |")
    print(f"|---|---|---|---|---|")
    for name, (reference_fn, ours_fn, repeats) in cases.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        t_ref, _, ref_maps = timed(reference_fn, repeats, device)
        t_ours, _, our_maps = timed(ours_fn, repeats, device)
        ours = [m[0] if m.dim() == 3 else m for m in our_maps]
        refs = [m[0] if m.dim() == 3 else m for m in ref_maps]
        diff = max_rel_diff(ours, refs)
        results.append({"method": name, "reference_s": t_ref, "ours_s": t_ours, "speedup": t_ref / t_ours,
                        "max_rel_diff": diff, "repeats": repeats})
        print(f"| {name} | {t_ref:.2f} | {t_ours:.2f} | {t_ref / t_ours:.2f}x | {diff:.1e} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "threads": args.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
