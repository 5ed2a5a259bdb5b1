"""One thread against torch's default on this machine: the README's occlusion snippet and feature visualisation.

    python benchmarks/bench_threads.py --repeats 2

Runs interleaved (1 thread, then torch's default, per repeat) and prints each time with the one-minute
load average at its start, so that a reader sees how busy the machine was.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import ssl_widgets
from ssl_widgets.attr import ConditionalOcclusion, FeatureVisualization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    default = torch.get_num_threads()
    model = ssl_widgets.load_model("tiny-simclr")
    x1, x2 = ssl_widgets.make_pair("chelsea", "aug", model.input_size, seed=0)
    cases = {
        "occlusion (README snippet, window 32, stride 4)":
            lambda: ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=32, strides=4),
        "feature visualisation (layer3, score, defaults)":
            lambda: FeatureVisualization(model, "layer3").visualize(x2, mode="score",
                                                                    generator=torch.Generator().manual_seed(0)),
    }
    print(f"torch default threads {default}, cores {os.cpu_count()}")
    for name, run in cases.items():
        for repeat in range(args.repeats):
            for threads in (1, default):
                torch.set_num_threads(threads)
                load = os.getloadavg()[0]
                start = time.perf_counter()
                run()
                print(f"{name}: {threads} thread(s) {time.perf_counter() - start:6.2f} s (load {load:.1f}, "
                      f"repeat {repeat})", flush=True)


if __name__ == "__main__":
    main()
