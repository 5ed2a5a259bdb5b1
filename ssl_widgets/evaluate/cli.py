"""Command line of the evaluation driver (imports torch only when it runs)."""
from __future__ import annotations

from .._argtypes import ArgumentParser, nonnegative_int, positive_int, run_reporting_errors

__all__ = ["DEFAULT_METHODS", "add_arguments", "main", "run_from_args"]

#: the methods evaluated without ``--methods`` (any name of ``ssl_widgets.evaluate.driver.method_names()``)
DEFAULT_METHODS = ("grad-cam", "interaction-cam", "input-x-gradient", "averaged-transforms")


def add_arguments(parser) -> None:
    """The evaluate options, shared by ``ssl-widgets evaluate`` and ``python -m ssl_widgets.evaluate``."""
    parser.add_argument("--data", required=True, help="image folder (searched recursively)")
    parser.add_argument("--model", default="tiny-simclr")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--task", choices=("pairs", "correspondence"), default="pairs",
                        help="pairs: the pair metrics table; correspondence: the geometric correspondence benchmark "
                             "of the joint methods")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated method names (default {','.join(DEFAULT_METHODS)}; see "
                             "`ssl-widgets explain --help` for all names; for --task correspondence: "
                             "feature-cosine,joint-gradient,joint-occlusion; bilrp on request)")
    parser.add_argument("--grid", type=positive_int, default=7, help="patch grid of --task correspondence")
    parser.add_argument("--pairs", type=positive_int, default=100)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--out", default="evaluation", help="output folder")
    parser.add_argument("--transform", default="aug", help="view transform of the second image")
    parser.add_argument("--step", type=positive_int, default=None,
                        help="pixels per insertion/deletion step (default 224, the paper's)")
    parser.add_argument("--sensitivity-samples", type=positive_int, default=10,
                        help="perturbed inputs per pair for max-sensitivity (default 10; each re-runs the method)")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--strict", action="store_true",
                        help="fail on an unreadable image instead of skipping it (skipped images are counted in "
                             "the table's caption)")


def main(argv: list[str] | None = None) -> int:
    """``python -m ssl_widgets.evaluate``: a user error is one line on stderr and exit status 2."""
    prog = "python -m ssl_widgets.evaluate"
    parser = ArgumentParser(prog=prog, description="Run methods x pair metrics over an image folder and write the "
                                                   "paper-style table (works under torchrun).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_reporting_errors(prog, run_from_args, args)


def _records(out: str) -> list[dict]:
    """The records written to ``out`` (its results and the unmerged shards of an interrupted run)."""
    import json
    from pathlib import Path

    records = []
    for path in [Path(out) / "results.jsonl", *sorted((Path(out) / "partial").glob("rank*.jsonl"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


def _estimate(out: str, methods: list[str], pairs: int, overhead: float = 0.0) -> float | None:
    """Seconds the rest of the run will take: the remaining (pair, method) records, each at its method's median
    time so far, plus ``overhead``, the run's own fixed cost (loading the model, fingerprinting the weights and
    the data, writing the table and figure), which the run after the timed first pair pays again."""
    import statistics

    records = _records(out)
    done = {(r.get("pair"), r.get("method")) for r in records}
    total = overhead
    for method in methods:
        remaining = sum((i, method) not in done for i in range(pairs))
        times = [r["seconds"] for r in records if r.get("method") == method and "seconds" in r]
        if remaining and not times:
            return None
        total += statistics.median(times) * remaining if remaining else 0.0
    return total


def run_from_args(args) -> int:
    """Run the evaluation of parsed ``args``: warn when pairs cycle, time one pair, print an estimate, run."""
    import os
    import sys
    import time
    from dataclasses import replace
    from pathlib import Path

    from ..data import list_images
    from ..threads import set_threads
    from .driver import EvaluationConfig, evaluate
    from .table import duration_text

    set_threads(args.threads)  # the load-aware default of every command (2 threads on a busy machine: ~10x slower)
    if getattr(args, "task", "pairs") == "correspondence":
        from pathlib import Path

        from .correspondence import DEFAULT_CORRESPONDENCE_METHODS, evaluate_correspondence

        methods = [m for m in args.methods.split(",") if m] if args.methods else list(DEFAULT_CORRESPONDENCE_METHODS)
        evaluate_correspondence(args.data, args.model, methods, pairs=args.pairs, seed=args.seed, grid=args.grid,
                                out=args.out, weights=args.weights)
        print((Path(args.out) / "correspondence.md").read_text())
        return 0
    methods = args.methods or ",".join(DEFAULT_METHODS)
    cfg = EvaluationConfig(data=args.data, model=args.model, weights=args.weights,
                           methods=[m for m in methods.split(",") if m], pairs=args.pairs, seed=args.seed,
                           out=args.out, transform=args.transform, step=args.step,
                           sensitivity_samples=args.sensitivity_samples, show_progress=not args.no_progress,
                           strict=getattr(args, "strict", False))
    lead = int(os.environ.get("RANK", "0")) == 0
    images = len(list_images(args.data))
    if args.pairs > images and lead:
        print(f"warning: --pairs {args.pairs} exceeds the {images} images under {args.data}: the pairs cycle "
              f"through the same images (each time with a new augmented view)", file=sys.stderr)
    overhead = 0.0
    fresh = not (Path(args.out) / "results.jsonl").exists() and not list(Path(args.out).glob("partial/rank*.jsonl"))
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and args.pairs > 1 and fresh:
        # the first pair is a normal record of the run (the full run skips it), timed for the estimate
        started = time.perf_counter()
        evaluate(replace(cfg, pairs=1, show_progress=False))
        took = time.perf_counter() - started
        overhead = max(0.0, took - sum(r.get("seconds", 0.0) for r in _records(args.out)))
        print(f"the first pair took {took:.1f} s for {len(cfg.methods)} method(s)", file=sys.stderr)
    if lead:
        estimate = _estimate(args.out, cfg.methods, cfg.pairs, overhead=overhead)
        if estimate is not None:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            print(f"estimated time for the remaining pairs: about {duration_text(estimate / world)}"
                  + (f" ({world} processes)" if world > 1 else ""), file=sys.stderr)
    summary = evaluate(cfg)
    if summary:
        print((Path(args.out) / "table.md").read_text())
    return 0
