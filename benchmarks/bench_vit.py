"""CAM update on a ViT-S/16 against a ResNet-50, both at 224 px, side by side in one run.

A "CAM update" is what the explorer does when a pair changes: one forward of both images and one
backward (:func:`ssl_widgets.attr.cam.cam_variants` with Grad-CAM and Interaction-CAM max). The
ViT-S/16 is DINO's architecture (timm, class token; the CAM layer is ``blocks.11.norm1``); the
ResNet-50 is the package's trunk with a 2048-2048-128 head. Random weights; the two models run
alternately and medians are reported, with the ratio ViT / ResNet-50.

    python benchmarks/bench_vit.py                 # 2 threads, CPU, 15 repeats
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

from bench_methods import resnet50_models

from ssl_widgets.attr import ClassTokenAttention
from ssl_widgets.attr.cam import cam_variants
from ssl_widgets.models import IMAGENET_MEAN, IMAGENET_STD, SSLModel
from ssl_widgets.models.dino import VIT_ARCHS

VARIANTS = ["grad-cam", "interaction-cam:max"]


def build_vit_s16(device: str) -> SSLModel:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(num_classes=0, global_pool="token", dynamic_img_size=True, **VIT_ARCHS["dino-vits16"])
    model = SSLModel(vit, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="vit-s16-random", pooling="cls",
                     num_prefix_tokens=1, patch_size=16)
    return model.eval().to(device)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(HERE / "results" / "cpu_vit"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(1, 3, 224, 224, generator=g).to(args.device) for _ in range(2))
    models = {"resnet50": resnet50_models(args.device)["ResNetTrunk"], "vit-s16": build_vit_s16(args.device)}
    tasks = {f"{name}: CAM update": (lambda m=m: cam_variants(m, (x1, x2), VARIANTS)) for name, m in models.items()}
    attention = ClassTokenAttention(models["vit-s16"])
    tasks["vit-s16: cls-attention"] = lambda: attention.attribute((x1, x2))
    times: dict[str, list[float]] = {k: [] for k in tasks}
    for _ in range(2):  # warm-up
        for fn in tasks.values():
            fn()
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every task alike
        for key, fn in tasks.items():
            times[key].append(timed(fn))
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["vit-s16: CAM update"] / medians["resnet50: CAM update"]
    header = (f"CAM update at 224 px ({', '.join(VARIANTS)}; one forward + one backward of the pair), "
              f"{args.device}, {args.threads} threads, median of {args.repeats}, random weights")
    lines = [header, "", "| task | median (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in medians.items()]
    lines += ["", f"ViT-S/16 / ResNet-50 CAM update: {ratio:.2f}x (target: within 2x)"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"medians_s": medians, "ratio_vit_over_resnet50": ratio,
                                                    "threads": args.threads, "device": args.device,
                                                    "repeats": args.repeats}, indent=2) + "\n")


if __name__ == "__main__":
    main()
