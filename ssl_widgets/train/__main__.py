"""``python -m ssl_widgets.train --method simclr|barlow-twins|simsiam|dino --data DIR --out FILE``."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .._argtypes import (
    ArgumentParser,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
    run_reporting_errors,
)
from .loop import METHODS, TrainConfig, train

PROG = "python -m ssl_widgets.train"


def _positive_ints(text: str) -> list[int]:
    """Comma-separated positive integers (argparse ``type=``; empty: the method's default)."""
    return [positive_int(v) for v in text.split(",")] if text else []


def _probabilities(text: str) -> list[float]:
    """Comma-separated numbers in [0, 1] (argparse ``type=``; empty: the method's default)."""
    return [probability(v) for v in text.split(",")] if text else []


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Train a small self-supervised model (the shipped default models) on an image folder: a tiny "
        "ResNet with SimCLR, Barlow Twins or SimSiam, or a tiny ViT with DINO. Every 5th image (sorted by path) is "
        "held out; the held-out retrieval top-1 (query seed 1) selects the best checkpoint.",
    )
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--data", required=True, help="image folder (searched recursively)")
    parser.add_argument("--out", required=True, help="weight file to write; <out>.ckpt is the resumable checkpoint, "
                        "<out>.json the run summary")
    parser.add_argument("--epochs", type=positive_int, default=200)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="learning rate (default x batch/256: LARS 0.4 SimCLR, 0.3 Barlow Twins; SGD 0.05 "
                        "SimSiam; AdamW 5e-4 DINO)")
    parser.add_argument("--weight-decay", type=nonnegative_float, default=None,
                        help="weight decay (default 1e-4; DINO 0.04, rising to --weight-decay-end)")
    parser.add_argument("--warmup-epochs", type=nonnegative_int, default=10)
    parser.add_argument("--image-size", type=positive_int, default=112)
    parser.add_argument("--width", type=positive_int, default=32, help="channels of the first ResNet stage")
    parser.add_argument("--min-scale", type=probability, default=None,
                        help="smallest RandomResizedCrop area fraction (default 0.2; DINO global crops 0.25)")
    parser.add_argument("--head-dims", type=_positive_ints, default=[],
                        help="projector widths after the trunk, comma-separated (default 512,128 / 1024,1024,1024)")
    parser.add_argument("--last-bn", action=argparse.BooleanOptionalAction, default=None,
                        help="end the projector in BatchNorm1d(affine=False) (default: on for barlow-twins, simsiam)")
    parser.add_argument("--predictor-dims", type=_positive_ints, default=[], help="SimSiam predictor widths (default D/4,D)")
    parser.add_argument("--blur-p", type=_probabilities, default=[], help="Gaussian blur probability of view 1,view 2")
    parser.add_argument("--solarize-p", type=_probabilities, default=[], help="solarisation probability of view 1,view 2")
    parser.add_argument("--lambd", type=nonnegative_float, default=0.0051, help="Barlow Twins off-diagonal weight")
    parser.add_argument("--temperature", type=positive_float, default=0.2, help="NT-Xent temperature")
    parser.add_argument("--eval-every", type=nonnegative_int, default=10,
                        help="held-out retrieval every N epochs; the best is kept (0: keep the final weights)")
    dino = parser.add_argument_group("DINO (--method dino, a timm ViT)")
    dino.add_argument("--patch-size", type=positive_int, default=8)
    dino.add_argument("--embed-dim", type=positive_int, default=192)
    dino.add_argument("--depth", type=positive_int, default=6)
    dino.add_argument("--num-heads", type=positive_int, default=3)
    dino.add_argument("--out-dim", type=positive_int, default=4096, help="prototypes of the DINO head")
    dino.add_argument("--local-crops", type=nonnegative_int, default=6)
    dino.add_argument("--local-size", type=positive_int, default=48)
    dino.add_argument("--local-min-scale", type=probability, default=0.05)
    dino.add_argument("--teacher-temp", type=positive_float, default=0.07)
    dino.add_argument("--warmup-teacher-temp-epochs", type=nonnegative_int, default=30)
    dino.add_argument("--momentum-teacher", type=probability, default=0.996)
    dino.add_argument("--weight-decay-end", type=nonnegative_float, default=0.4)
    dino.add_argument("--clip-grad", type=nonnegative_float, default=3.0)
    dino.add_argument("--drop-path", type=probability, default=0.1)
    dino.add_argument("--global-size", type=positive_int, default=None,
                      help="train the student on global crops resized to this size (default --image-size; the "
                      "evaluation and the shipped model stay at --image-size)")
    dino.add_argument("--init-from", default=None, metavar="FILE",
                      help="start student and teacher (backbone and DINO head) from a tiny ViT weight file")
    dino.add_argument("--distill-from", default=None, metavar="MODEL",
                      help="add a contrastive distillation term towards a frozen self-supervised model (a model "
                      "name of load_model, e.g. tiny-simclr)")
    dino.add_argument("--distill-weight", type=nonnegative_float, default=1.0)
    dino.add_argument("--distill-temp", type=positive_float, default=0.1)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bfloat16 autocast (default: on with CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last memory format (default: on with CUDA)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="MIN",
                        help="cap the epochs so that training fits MIN minutes (planned after 12 epochs, "
                        "hard stop at the budget)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing <out>.ckpt")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train from the command line; a user error is one line on stderr and exit status 2, a diverged run exits 1."""
    args = build_parser().parse_args(argv)
    return run_reporting_errors(PROG, _run, args)


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        method=args.method, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, image_size=args.image_size,
        width=args.width, min_scale=args.min_scale, seed=args.seed, device=args.device,
        time_budget_min=args.time_budget, lambd=args.lambd, temperature=args.temperature,
        head_dims=args.head_dims, last_bn=args.last_bn, predictor_dims=args.predictor_dims,
        blur_p=args.blur_p, solarize_p=args.solarize_p, eval_every=args.eval_every,
        amp=args.amp, channels_last=args.channels_last, patch_size=args.patch_size, embed_dim=args.embed_dim,
        depth=args.depth, num_heads=args.num_heads, out_dim=args.out_dim, local_crops=args.local_crops,
        local_size=args.local_size, local_min_scale=args.local_min_scale, teacher_temp=args.teacher_temp,
        warmup_teacher_temp_epochs=args.warmup_teacher_temp_epochs, momentum_teacher=args.momentum_teacher,
        weight_decay_end=args.weight_decay_end, clip_grad=args.clip_grad, drop_path=args.drop_path,
        global_size=args.global_size, init_from=args.init_from, distill_from=args.distill_from, distill_weight=args.distill_weight,
        distill_temp=args.distill_temp)
    summary = train(cfg, resume=not args.no_resume, show_progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "loss_history"}))
    if summary["status"] == "diverged":
        print(f"{PROG}: error: {summary['diverged']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
