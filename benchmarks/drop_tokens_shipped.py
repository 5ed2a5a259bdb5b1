"""The ViT-native occlusion (``fill="drop-tokens"``) against grey-fill occlusion on the shipped ViT.

On ``tiny-dino-vit`` (112 px, 8-px patches) and the README's default pair (the cat and the CLI's
augmented view of it), conditional and context-agnostic occlusion at window 32 / stride 8 (whole
patches) with the default fill and with ``fill="drop-tokens"``: how far apart the two explanations are
(Pearson r of the window grids per image, largest difference, where each puts its peak) and their
speed (median of ``--repeats`` interleaved calls).

    python benchmarks/drop_tokens_shipped.py --threads 2 --repeats 3
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
sys.path[:0] = [str(HERE.parent)]

import ssl_widgets  # noqa: E402
from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion  # noqa: E402


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1])


def peak(grid: torch.Tensor) -> tuple[int, int]:
    flat = int(grid.argmax())
    return flat // grid.shape[-1], flat % grid.shape[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "results" / "drop_tokens_shipped"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ssl_widgets.load_model("tiny-dino-vit")
    x1, x2 = ssl_widgets.make_pair("chelsea", "aug", model.input_size, seed=0)
    w, s = args.window, args.stride
    rows = []
    for cls in (ConditionalOcclusion, ContextAgnosticOcclusion):
        method = cls(model)
        calls = {fill: (lambda fill=fill, method=method: method.attribute((x1, x2), w, s, grid=True, fill=fill))
                 for fill in ("pixels", "drop-tokens")}
        times: dict[str, list[float]] = {fill: [] for fill in calls}
        grids = {}
        for _ in range(args.repeats):
            for fill, call in calls.items():
                start = time.perf_counter()
                grids[fill] = call()
                times[fill].append(time.perf_counter() - start)
        median = {fill: statistics.median(t) for fill, t in times.items()}
        for view in (0, 1):
            grey, drop = grids["pixels"][view][0], grids["drop-tokens"][view][0]
            rows.append({"method": cls.method_name, "image": view + 1, "pearson_r": pearson(grey, drop),
                         "max_abs_diff": float((grey - drop).abs().max()), "grey_range": float(grey.max() - grey.min()),
                         "peak_grey": peak(grey), "peak_drop": peak(drop),
                         "seconds_grey": median["pixels"], "seconds_drop": median["drop-tokens"]})
    lines = [f"# fill='drop-tokens' against grey fill on tiny-dino-vit ({model.input_size} px, patch {model.patch_size}), "
             f"window {w} / stride {s}, {args.threads} threads, median of {args.repeats}", "",
             f"`python benchmarks/drop_tokens_shipped.py --threads {args.threads} --repeats {args.repeats}`", "",
             "| method | image | Pearson r | max abs diff (grey map's range) | peak grey / drop-tokens | seconds grey / drop-tokens |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['image']} | {r['pearson_r']:.3f} | {r['max_abs_diff']:.3f} "
                     f"({r['grey_range']:.3f}) | {r['peak_grey']} / {r['peak_drop']} | "
                     f"{r['seconds_grey']:.2f} / {r['seconds_drop']:.2f} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
