"""Speed of the joint explanations on the shipped default model (tiny-simclr, 112 px) on this CPU.

Side by side in one run: the bilinear decomposition (forward-mode JVPs, the default for a 7x7
grid, and batched backward passes over the 128 embedding dimensions), and joint occlusion on a
7x7 grid (incremental engine and full forward passes). Medians of ``--repeats`` runs after one warm-up.

    python benchmarks/bench_joint.py --threads 2
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

from ssl_widgets.attr import JointGradient, JointOcclusion
from ssl_widgets.data import make_pair
from ssl_widgets.models import load_model


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "joint_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("tiny-simclr")
    x1, x2 = make_pair("chelsea", "aug", model.input_size, seed=0)
    cases = {
        "joint-gradient 7x7 (forward mode, default)": lambda: JointGradient(model).attribute((x1, x2), grid=7),
        "joint-gradient 7x7 (reverse mode, batched backward)":
            lambda: JointGradient(model).attribute((x1, x2), grid=7, mode="reverse"),
        "joint-occlusion 7x7 (incremental, default)": lambda: JointOcclusion(model).attribute((x1, x2), grid=7),
        "joint-occlusion 7x7 (full forward passes)":
            lambda: JointOcclusion(model).attribute((x1, x2), grid=7, incremental=False),
    }
    results = {name: round(median_seconds(run, args.repeats), 3) for name, run in cases.items()}
    for name, seconds in results.items():
        print(f"{name:55s} {seconds:7.3f} s")
    Path(args.out).write_text(json.dumps({"model": "tiny-simclr", "threads": args.threads, "repeats": args.repeats,
                                          "median_seconds": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
