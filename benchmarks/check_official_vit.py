"""Compare DINO / DINOv2 ViT embeddings of ``load_model`` with the official model code on the same weights.

The official code is not part of this repository: give the folder of a checkout of
facebookresearch/dino (its ``vision_transformer.py``) and of facebookresearch/dinov2 (the folder
that holds the ``dinov2`` package). Each official model is built with random weights (position
embeddings and layer scales made large enough that resampling matters), saved in its published
layout, loaded with ``ssl_widgets.load_model(name, weights=FILE)``, and both embed the same images at
each size::

    python benchmarks/check_official_vit.py --dino-repo PATH/dino --dinov2-repo PATH/dinov2 \
        --sizes 224 480 518 238 --out benchmarks/results/official_vit.json

Prints, per model and size, the largest difference relative to the embedding's largest magnitude
and the smallest cosine; exits 1 if a relative difference exceeds ``--tolerance`` (1e-5).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from ssl_widgets.models import load_model


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)  # large, so that resampling shows
            elif "ls" in name.split(".")[-2:][0] and name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            elif name.endswith(("cls_token", "register_tokens", "mask_token")):
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def official_models(dino_repo: Path, dinov2_repo: Path) -> dict[str, torch.nn.Module]:
    sys.path[:0] = [str(dino_repo), str(dinov2_repo)]
    import vision_transformer as dino_vits  # facebookresearch/dino
    from dinov2.hub.backbones import dinov2_vits14, dinov2_vits14_reg  # facebookresearch/dinov2

    return {
        "dino-vits16": _randomised(dino_vits.vit_small(patch_size=16), 1),
        "dinov2-vits14": _randomised(dinov2_vits14(pretrained=False), 2),
        "dinov2-vits14-reg": _randomised(dinov2_vits14_reg(pretrained=False), 3),
    }


def compare(official: torch.nn.Module, ours: torch.nn.Module, size: int) -> dict[str, float]:
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        expected = official(ours.normalize(images))
        got = ours(images)
    relative = float((got - expected).abs().max() / expected.abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(got, expected).min())
    return {"size": size, "max_abs_diff_relative": relative, "min_cosine": cosine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dino-repo", type=Path, required=True, help="checkout of facebookresearch/dino")
    parser.add_argument("--dinov2-repo", type=Path, required=True, help="folder holding the dinov2 package")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 480, 518, 240, 238],
                        help="input sides, each rounded down to a multiple of the model's patch size")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, official in official_models(args.dino_repo, args.dinov2_repo).items():
            path = Path(tmp) / f"{name}.pth"
            torch.save(official.state_dict(), path)
            ours = load_model(name, weights=path)
            patch = ours.patch_size
            for size in dict.fromkeys(size // patch * patch for size in args.sizes):
                row = {"model": name, **compare(official, ours, size)}
                rows.append(row)
                worst = max(worst, row["max_abs_diff_relative"])
                print(f"{name:18s} {size:4d} px  max|diff|/max|ref| {row['max_abs_diff_relative']:.2e}  "
                      f"min cosine {row['min_cosine']:.8f}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                                        "rows": rows}, indent=1) + "\n")
    print(f"worst relative difference {worst:.2e} (tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
