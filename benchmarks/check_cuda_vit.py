"""The ViT paths and the explorer's compute on a CUDA device (run by ``gpu_checks.sh`` when a GPU is lent).

1. **ViT occlusion on the device**: a ViT-S/16 (DINO layout, random weights) at 224 px, conditional and
   context-agnostic occlusion at window 64 / stride 8 by the package and by the authors' loop
   (``authors_loops.py``), both on the device in float32 (TF32 off): seconds and largest map difference;
   the opt-in ``fill="drop-tokens"`` at a patch-aligned stride, its seconds.
2. **The explorer's compute on the device**: an :class:`~ssl_widgets.widgets.Explorer` (``threaded=False``)
   on the shipped ``tiny-dino-vit`` with its device set to ``--device``, every tab's method selected in turn,
   each map compared with the same explorer on the CPU (relative difference).
3. ``--bf16`` (opt-in): each method through ``explain_pair`` under ``torch.autocast(dtype=torch.bfloat16)``
   against float32 on the device, the relative difference stated (reported, never failed on).

It exits non-zero when anything raises, a map is not finite, the package's occlusion differs from the
authors' loop by more than 1e-4, or a deterministic explorer map differs from the CPU's by more than
``--tolerance``.

    python benchmarks/check_cuda_vit.py --device cuda --bf16 --out results/gpu_vit
    python benchmarks/check_cuda_vit.py --device cpu --size 64 --window 32 --stride 16 --quick --bf16  # self-test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
import authors_loops
from bench_methods import sync
from bench_vit import build_vit_s16
from check_cuda import RANDOM, checked, relative_difference

from ssl_widgets import load_model
from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion
from ssl_widgets.explain import explain_pair

#: the explorer's methods checked on the ViT (one per tab or variant that applies to a ViT)
EXPLORER_METHODS = ("conditional-occlusion", "context-agnostic-occlusion", "pairwise-occlusion", "interaction-cam:max",
                    "grad-cam", "smoothgrad", "integrated-gradients", "averaged-transforms", "pixel-invariance",
                    "cls-attention", "attention-rollout")


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def vit_occlusion_rows(device: str, size: int, window: int, stride: int) -> list[dict]:
    model = build_vit_s16(device)
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(1, 3, size, size, generator=g).to(device) for _ in range(2))
    rows = []
    for label, ours, authors in (("conditional", ConditionalOcclusion(model), authors_loops.conditional_occlusion),
                                 ("context-agnostic", ContextAgnosticOcclusion(model),
                                  authors_loops.context_agnostic_occlusion)):
        def compare(ours=ours, authors=authors):
            t_ours, maps = timed(lambda: ours.attribute((x1, x2), window, stride, grid=True), device)
            t_authors, ref = timed(lambda: authors(model, x1, x2, window, stride), device)
            diff = max(float((m[0] - r).abs().max()) for m, r in zip(maps, ref))
            if diff > 1e-4 or not all(bool(torch.isfinite(m).all()) for m in maps):
                raise AssertionError(f"the package's map differs from the authors' loop by {diff:.2e} (> 1e-4)")
            return {"seconds_ours": t_ours, "seconds_authors": t_authors, "speedup": t_authors / t_ours,
                    "max_abs_diff": diff}

        rows.append(checked("vit-s16", f"{label} occlusion w{window}/s{stride} vs the authors' loop", compare))
    aligned = max(model.patch_size, stride - stride % model.patch_size)

    def drop_tokens():
        seconds, maps = timed(lambda: ConditionalOcclusion(model).attribute(
            (x1, x2), window, aligned, grid=True, fill="drop-tokens"), device)
        if not all(bool(torch.isfinite(m).all()) for m in maps):
            raise AssertionError("drop-tokens map not finite")
        return {"seconds": seconds, "stride": aligned}

    rows.append(checked("vit-s16", f"conditional occlusion, fill='drop-tokens', w{window}/s{aligned}", drop_tokens))
    return rows


def explorer_maps(device: str, methods=EXPLORER_METHODS) -> dict:
    """Every listed method's maps as the explorer computes them on ``device`` (``None`` where the tab is absent)."""
    from ssl_widgets.widgets import Explorer

    explorer = Explorer("tiny-dino-vit", threaded=False)
    explorer.inputs.device_select.value = device
    maps = {}
    for name in methods:
        try:
            explorer.select_method(name)
        except ValueError:
            maps[name] = None
            continue
        explorer.wait()
        if explorer.last_error:
            raise RuntimeError(f"{name}: {explorer.last_error}")
        maps[name] = [m.detach().float().cpu() if m is not None else None for m in explorer.maps]
    return maps


def explorer_rows(device: str, tolerance: float, methods=EXPLORER_METHODS) -> list[dict]:
    reference, on_device = explorer_maps("cpu", methods), explorer_maps(device, methods)
    rows = []
    for name in methods:
        def compare(name=name):
            if on_device[name] is None:
                return {"note": "no explorer tab shows it"}
            diff = max(relative_difference(a, b) for a, b in zip(reference[name], on_device[name]) if a is not None)
            finite = all(bool(torch.isfinite(m).all()) for m in on_device[name] if m is not None)
            if not finite or (name not in RANDOM and diff > tolerance):
                raise AssertionError(f"explorer map on {device} differs from the CPU's by {diff:.2e} (finite: {finite})")
            return {"relative_diff_vs_cpu": diff}

        rows.append(checked("tiny-dino-vit", f"explorer: {name}", compare))
    return rows


def bf16_rows(device: str, methods=EXPLORER_METHODS) -> list[dict]:
    model = load_model("tiny-dino-vit").to(device)
    size = model.input_size
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(1, 3, size, size, generator=g).to(device) for _ in range(2))
    rows = []
    for name in methods:
        def compare(name=name):
            def run():
                return explain_pair(model, name, x1, x2, generator=torch.Generator().manual_seed(0))
            exact = run()
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                fast = run()
            return {"bf16_relative_diff": max(relative_difference(a, b) for a, b in zip(exact[:2], fast[:2]))}

        rows.append(checked("tiny-dino-vit", f"bf16 autocast: {name}", compare))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--bf16", action="store_true", help="also the bf16-autocast differences (reported only)")
    parser.add_argument("--quick", action="store_true", help="explorer and bf16 checks of the fast tabs only "
                        "(a self-test of the script on a CPU)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = vit_occlusion_rows(args.device, args.size, args.window, args.stride)
    methods = ("interaction-cam:max", "grad-cam", "cls-attention") if args.quick else EXPLORER_METHODS
    rows += explorer_rows(args.device, args.tolerance, methods)
    if args.bf16:
        rows += bf16_rows(args.device, methods)
    failed = [r for r in rows if r["status"] != "ok"]
    for row in rows:
        details = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()
                   if k not in ("model", "method", "status", "traceback")}
        print(f"{row['status']:>5}  {row['model']:<14} {row['method']:<62} {details}")
        if row["status"] != "ok":
            print(row.get("traceback", ""))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"device": args.device, "rows": rows}, indent=2) + "\n")
    print(f"{len(rows) - len(failed)} of {len(rows)} checks ok on {args.device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
