"""Where one refined occlusion call spends its time, per kind of operation, at a given thread count.

Runs the Explorer's refined request on the shipped default model (conditional occlusion, patch 28,
stride 4, both images of the pair) under ``torch.profiler`` and prints the wall time and each
operation's own CPU time, with the convolutions split by weight shape (the Winograd path shows as
``aten::bmm`` and ``aten::mm``; crop gathers and pastes as ``aten::index_select`` and
``aten::index_copy_``). Run it at one and at two threads to see which operations scale:

    python benchmarks/profile_refined.py --threads 1
    python benchmarks/profile_refined.py --threads 2

With two or more threads the batches run in two worker threads (``ssl_widgets.attr._occlusion_engine.workers``); the
operations' times are then summed over both workers, and can add up to more than the wall time.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from torch._C._profiler import _ExperimentalConfig
from torch.profiler import profile

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from occlusion_work import add_request_arguments, refined_request  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    add_request_arguments(parser)
    parser.add_argument("--rows", type=int, default=20, help="operations listed (largest first)")
    args = parser.parse_args()
    _, refined_call = refined_request(args)
    # the batches run in worker threads (ssl_widgets.attr._occlusion_engine.workers): record every thread's operations
    with profile(record_shapes=True, experimental_config=_ExperimentalConfig(profile_all_threads=True)) as prof:
        start = time.perf_counter()
        refined_call()
        wall = time.perf_counter() - start
    own_ms: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        name = event.key
        if name == "aten::mkldnn_convolution" and len(event.input_shapes) > 1:
            name = f"convolution {tuple(event.input_shapes[1])}"
        own_ms[name] += event.self_cpu_time_total / 1e3
    print(f"model={args.model} threads={args.threads} patch={args.patch} stride={args.stride}: "
          f"wall {wall:.2f} s under the profiler, time inside the operations {sum(own_ms.values()) / 1e3:.2f} s")
    print("| operation | time inside it, children excluded (ms) |\n|---|---|")
    for name, ms in sorted(own_ms.items(), key=lambda item: -item[1])[:args.rows]:
        print(f"| {name} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
