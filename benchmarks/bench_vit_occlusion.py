"""Occlusion on a ViT-S/16 at 224 px: the package against the two baselines a user would run, side by side.

* **the authors' loop** (``authors_loops.py``: every occluded copy stacked first, batches of 32, one
  ``model()`` call per batch; it takes any model that returns an embedding);
* **Captum's** ``Occlusion`` on a similarity forward (:class:`ssl_widgets.attr.SimilarityForward`:
  ``cos(model(x), model(other))``), same windows, ``perturbations_per_eval=32``, run once per image;
* **ours**: :class:`~ssl_widgets.attr.ConditionalOcclusion` / :class:`~ssl_widgets.attr.ContextAgnosticOcclusion`
  with their defaults (the token evaluator on a timm ViT).

All three compute the same maps (conditional occlusion at window 64 / stride 8: 441 windows per image,
882 occluded copies); the largest difference is printed. The calls run interleaved, ``--repeats`` times,
and the medians and their ratios are reported. Then the opt-in ViT-native occlusion
(``fill="drop-tokens"``, patch-aligned windows) against exact grey-fill occlusion at the same windows,
and (``--profile``) the operation profile of one ViT-S/16 forward: where its multiply-adds are and
which of them exact occlusion can skip.

Random weights in DINO's ViT-S/16 layout (timm, class token), two random 224-px images.

    python benchmarks/bench_vit_occlusion.py --threads 2 --repeats 3 --profile
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
import authors_loops
from bench_methods import cpu_name
from bench_vit import build_vit_s16

from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion, SimilarityForward


def captum_conditional(model, x1, x2, window: int, stride: int, per_eval: int = 32):
    """Both images' conditional-occlusion maps by Captum's ``Occlusion`` (image size, mean over windows)."""
    from captum.attr import Occlusion

    fill = model.fill_value.view(1, 3, 1, 1).to(x1)
    maps = []
    for x, other in ((x1, x2), (x2, x1)):
        occlusion = Occlusion(SimilarityForward(model, other))
        attributions = occlusion.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                           baselines=fill.expand_as(x).contiguous(), perturbations_per_eval=per_eval)
        maps.append(attributions.mean(1))  # the window covers all 3 channels: each channel holds the same value
    return maps


def grid_to_pixels(grid: torch.Tensor, size: int, window: int, stride: int) -> torch.Tensor:
    """An ``(n, n)`` window grid as an image-size map: each pixel the mean over the windows that cover it
    (what ``grid=False`` and Captum's ``Occlusion`` give)."""
    import torch.nn.functional as F

    cols = grid.reshape(1, 1, -1).expand(1, window * window, -1)
    summed = F.fold(cols, (size, size), window, stride=stride)
    count = F.fold(torch.ones_like(cols), (size, size), window, stride=stride)
    return (summed / count.clamp_min(1))[0, 0]


def max_diff(a, b) -> float:
    return max(float((u.reshape(-1) - v.reshape(-1)).abs().max()) for u, v in zip(a, b))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_interleaved(tasks: dict, repeats: int) -> tuple[dict, dict]:
    times = {k: [] for k in tasks}
    outputs = {}
    for _ in range(repeats):
        for key, fn in tasks.items():
            seconds, outputs[key] = timed(fn)
            times[key].append(seconds)
            print(f"  {key}: {seconds:.1f} s", flush=True)
    return {k: statistics.median(v) for k, v in times.items()}, outputs


def operation_profile(model, size: int = 224, window: int = 64, stride: int = 8) -> list[dict]:
    """Multiply-adds (giga) of one forward by part, and what of each part exact occlusion can skip.

    Linear layers and the patch embedding are counted by ``torch.utils.flop_counter``; fused attention
    (``q k^T`` and ``softmax(.) v``) is not counted there on CPU and is added as ``2 N^2 C`` per block. A
    window at ``stride`` touches on average ``t`` patch tokens of ``N - 1``: the patch embedding of the
    others and the first block's ``q, k, v`` of the others are the base image's (skippable); in the last
    block only the class token's query, attention row, projection and MLP reach the embedding.
    """
    from torch.utils.flop_counter import FlopCounterMode

    vit = model.trunk
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    flops = {name.split("trunk.", 1)[-1]: sum(count.values()) / 2e9 for name, count in counter.get_flop_counts().items()}
    patch = model.patch_size
    tokens = (size // patch) ** 2 + model.num_prefix_tokens
    dim = vit.embed_dim
    starts = range(0, size - window + 1, stride)
    touched_per_axis = statistics.mean((y + window - 1) // patch - y // patch + 1 for y in starts)
    touched = touched_per_axis ** 2
    untouched = (tokens - model.num_prefix_tokens - touched) / (tokens - model.num_prefix_tokens)
    attention = 2 * tokens ** 2 * dim / 1e9
    last = len(vit.blocks) - 1
    rows = [{"part": "patch embedding", "gmac": flops["patch_embed"], "skippable": flops["patch_embed"] * untouched}]
    for i in range(len(vit.blocks)):
        qkv, proj = flops[f"blocks.{i}.attn.qkv"], flops[f"blocks.{i}.attn.proj"]
        mlp = flops[f"blocks.{i}.mlp"]
        skip = 0.0
        if i == 0:
            skip = qkv * untouched * (tokens - model.num_prefix_tokens) / tokens
        if i == last:  # only the class token's query, attention row, projection and MLP
            rest = (tokens - 1) / tokens
            skip = qkv / 3 * rest + attention * rest + proj * rest + mlp * rest
        rows.append({"part": f"block {i}", "gmac": qkv + proj + mlp + attention, "skippable": skip})
    total = sum(r["gmac"] for r in rows)
    skippable = sum(r["skippable"] for r in rows)
    rows.append({"part": "whole forward", "gmac": total, "skippable": skippable,
                 "floor_speedup": total / (total - skippable), "touched_tokens": touched})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the conditional runs")
    parser.add_argument("--context-repeats", type=int, default=1, help="repeats of the context-agnostic runs")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also the operation profile of one forward")
    parser.add_argument("--drop-repeats", type=int, default=2, help="repeats of the drop-tokens runs")
    parser.add_argument("--out", default=str(HERE / "results" / "vit_occlusion"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_vit_s16("cpu")
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(1, 3, args.size, args.size, generator=g) for _ in range(2))
    w, s = args.window, args.stride
    ours_c, ours_ca = ConditionalOcclusion(model), ContextAgnosticOcclusion(model)
    with torch.no_grad():
        model(x1)  # warm-up

    report: dict = {"cpu": cpu_name(), "threads": args.threads, "window": w, "stride": s, "size": args.size,
                    "model": "ViT-S/16 (DINO layout, timm, random weights)"}
    print(f"conditional occlusion w{w}/s{s}, {args.repeats} interleaved repeats", flush=True)
    tasks = {"ours": lambda: [m.squeeze(0) for m in ours_c.attribute((x1, x2), w, s, grid=True)],
             "authors' loop": lambda: authors_loops.conditional_occlusion(model, x1, x2, w, s)}
    if not args.no_captum:
        tasks["Captum Occlusion"] = lambda: [m.squeeze(0) for m in captum_conditional(model, x1, x2, w, s)]
    medians, outputs = run_interleaved(tasks, args.repeats)
    report["conditional"] = {"median_s": medians,
                             "speedup_vs_authors": medians["authors' loop"] / medians["ours"],
                             "max_abs_diff_vs_authors": max_diff(outputs["ours"], outputs["authors' loop"])}
    if not args.no_captum:
        report["conditional"]["speedup_vs_captum"] = medians["Captum Occlusion"] / medians["ours"]
        ours_pixels = [grid_to_pixels(m, args.size, w, s) for m in outputs["ours"]]
        report["conditional"]["max_abs_diff_vs_captum"] = max_diff(ours_pixels, outputs["Captum Occlusion"])

    print(f"context-agnostic occlusion w{w}/s{s}, {args.context_repeats} repeats", flush=True)
    tasks = {"ours": lambda: [m.squeeze(0) for m in ours_ca.attribute((x1, x2), w, s, grid=True)],
             "authors' loop": lambda: authors_loops.context_agnostic_occlusion(model, x1, x2, w, s)}
    medians, outputs = run_interleaved(tasks, args.context_repeats)
    report["context_agnostic"] = {"median_s": medians,
                                  "speedup_vs_authors": medians["authors' loop"] / medians["ours"],
                                  "max_abs_diff_vs_authors": max_diff(outputs["ours"], outputs["authors' loop"])}

    patch = model.patch_size
    aligned = max(patch, (s // patch) * patch) if s % patch else s
    print(f"drop-tokens against grey fill, w{w}/s{aligned} (patch-aligned)", flush=True)
    tasks = {"grey fill (exact)": lambda: ours_c.attribute((x1, x2), w, aligned, grid=True),
             "drop-tokens": lambda: ours_c.attribute((x1, x2), w, aligned, grid=True, fill="drop-tokens")}
    medians, outputs = run_interleaved(tasks, args.drop_repeats)
    grey = torch.cat([m.reshape(-1) for m in outputs["grey fill (exact)"]])
    drop = torch.cat([m.reshape(-1) for m in outputs["drop-tokens"]])
    report["drop_tokens"] = {"stride": aligned, "median_s": medians,
                             "speedup_vs_grey_fill": medians["grey fill (exact)"] / medians["drop-tokens"],
                             "pearson_with_grey_fill": float(torch.corrcoef(torch.stack([grey, drop]))[0, 1])}
    if args.profile:
        report["profile"] = operation_profile(model, args.size, w, s)

    lines = [f"# ViT-S/16 occlusion at {args.size} px, window {w} / stride {s}, CPU ({report['cpu']}), "
             f"{args.threads} threads", "",
             f"`python benchmarks/bench_vit_occlusion.py --threads {args.threads} --repeats {args.repeats} "
             f"--context-repeats {args.context_repeats} --drop-repeats {args.drop_repeats}"
             f"{' --profile' if args.profile else ''}`", "",
             "| task | median (s) |", "|---|---|"]
    for section in ("conditional", "context_agnostic", "drop_tokens"):
        for key, value in report[section]["median_s"].items():
            lines.append(f"| {section}: {key} | {value:.1f} |")
    c, ca, d = report["conditional"], report["context_agnostic"], report["drop_tokens"]
    lines += ["", f"* conditional: ours {c['speedup_vs_authors']:.2f}x the authors' loop (max |diff| "
                  f"{c['max_abs_diff_vs_authors']:.1e})"]
    if "speedup_vs_captum" in c:
        lines.append(f"* conditional: ours {c['speedup_vs_captum']:.2f}x Captum's Occlusion (image-size maps, "
                     f"max |diff| {c['max_abs_diff_vs_captum']:.1e})")
    lines += [f"* context-agnostic: ours {ca['speedup_vs_authors']:.2f}x the authors' loop (max |diff| "
              f"{ca['max_abs_diff_vs_authors']:.1e})",
              f"* drop-tokens at stride {d['stride']}: {d['speedup_vs_grey_fill']:.2f}x exact grey-fill occlusion, "
              f"Pearson r with its grid {d['pearson_with_grey_fill']:.3f} (random weights)"]
    if args.profile:
        rows = report["profile"]
        lines += ["", f"Operation profile of one forward (multiply-adds, G; a window touches {rows[-1]['touched_tokens']:.1f} "
                  "patch tokens on average):", "", "| part | GMAC | exactly skippable |", "|---|---|---|"]
        lines += [f"| {r['part']} | {r['gmac']:.3f} | {r['skippable']:.3f} |" for r in rows if r["skippable"] or
                  r["part"] in ("block 1", "whole forward")]
        lines.append(f"\nExact work can skip at most {rows[-1]['skippable'] / rows[-1]['gmac']:.1%} of the multiply-adds "
                     f"({rows[-1]['floor_speedup']:.2f}x fewer): everything else of every copy depends on the occluded "
                     "tokens through attention.")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
