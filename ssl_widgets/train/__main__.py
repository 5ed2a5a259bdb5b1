"""``python -m ssl_widgets.train --method simclr|barlow-twins --data DIR --out FILE``."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .loop import METHODS, TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssl_widgets.train",
        description="Train a small self-supervised ResNet (the shipped default models) on an image folder. "
        "Every 5th image (sorted by path) is held out for the retrieval quality check.",
    )
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--data", required=True, help="image folder (searched recursively)")
    parser.add_argument("--out", required=True, help="weight file to write; <out>.ckpt is the resumable checkpoint")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="LARS learning rate (default: 0.4 / 0.3 x batch/256)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--width", type=int, default=32, help="channels of the first ResNet stage")
    parser.add_argument("--min-scale", type=float, default=0.2, help="smallest RandomResizedCrop area fraction")
    parser.add_argument("--head-dims", default=None,
                        help="projector widths after the trunk, comma-separated (default 512,128 / 1024,1024,1024)")
    parser.add_argument("--lambd", type=float, default=0.0051, help="Barlow Twins off-diagonal weight")
    parser.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                        help="cap the epochs so that training fits MIN minutes (decided after 2 epochs)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing <out>.ckpt")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(method=args.method, data=args.data, out=args.out, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, image_size=args.image_size, width=args.width,
                      min_scale=args.min_scale, seed=args.seed, device=args.device,
                      time_budget_min=args.time_budget, lambd=args.lambd, temperature=args.temperature,
                      head_dims=[int(d) for d in args.head_dims.split(",")] if args.head_dims else [])
    summary = train(cfg, resume=not args.no_resume, show_progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
