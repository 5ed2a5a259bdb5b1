"""Command line of the evaluation driver (imports torch only when it runs)."""
from __future__ import annotations

__all__ = ["add_arguments", "main", "run_from_args"]


def add_arguments(parser) -> None:
    """The evaluate options, shared by ``ssl-widgets evaluate`` and ``python -m ssl_widgets.evaluate``."""
    parser.add_argument("--data", required=True, help="image folder (searched recursively)")
    parser.add_argument("--model", default="tiny-simclr")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--task", choices=("pairs", "correspondence"), default="pairs",
                        help="pairs: the pair metrics table; correspondence: the geometric correspondence benchmark "
                             "of the joint methods")
    parser.add_argument("--methods", default=None,
                        help="comma-separated method names (default grad-cam,interaction-cam,input-x-gradient,"
                             "averaged-transforms; for --task correspondence: feature-cosine,joint-gradient,"
                             "joint-occlusion)")
    parser.add_argument("--grid", type=int, default=7, help="patch grid of --task correspondence")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="evaluation", help="output folder")
    parser.add_argument("--transform", default="aug", help="view transform of the second image")
    parser.add_argument("--step", type=int, default=None,
                        help="pixels per insertion/deletion step (default 224, the paper's)")
    parser.add_argument("--sensitivity-samples", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ssl_widgets.evaluate",
                                     description="Run methods x pair metrics over an image folder and write the "
                                                 "paper-style table (works under torchrun).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def run_from_args(args) -> int:
    import torch

    from .driver import EvaluationConfig, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "task", "pairs") == "correspondence":
        from pathlib import Path

        from .correspondence import CORRESPONDENCE_METHODS, evaluate_correspondence

        methods = [m for m in args.methods.split(",") if m] if args.methods else list(CORRESPONDENCE_METHODS)
        evaluate_correspondence(args.data, args.model, methods, pairs=args.pairs, seed=args.seed, grid=args.grid,
                                out=args.out, weights=args.weights)
        print((Path(args.out) / "correspondence.md").read_text())
        return 0
    methods = args.methods or "grad-cam,interaction-cam,input-x-gradient,averaged-transforms"
    cfg = EvaluationConfig(data=args.data, model=args.model, weights=args.weights,
                           methods=[m for m in methods.split(",") if m], pairs=args.pairs, seed=args.seed,
                           out=args.out, transform=args.transform, step=args.step,
                           sensitivity_samples=args.sensitivity_samples, show_progress=not args.no_progress)
    summary = evaluate(cfg)
    if summary:
        from pathlib import Path

        print((Path(args.out) / "table.md").read_text())
    return 0
