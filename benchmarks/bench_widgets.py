"""Interaction latency of the Explorer on the shipped default model (headless, like a kernel).

    python benchmarks/bench_widgets.py --threads 2 --patch 28 --stride 4

Reports the median over repeats of: the first (coarse) occlusion frame and the refined
conditional-occlusion map after a request (the Explorer's result cache and its store of each
image's occluded-copy embeddings cleared each time; the model's private inference copy stays
cached, as after any first use), the same after a new augmentation of view 2 (the resample
button: view 1's copies are reused from the store), a CAM update (pooling change), and an opacity
redraw; and the minor page faults of a new request (memory the C heap had returned to the system and
faults in again: about 70,000 to 120,000 here; with glibc set to keep freed memory, about 0, but
the refined map was no faster within this machine's noise, 1.03x in interleaved runs).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssl_widgets.attr._occlusion_engine import preview_stride  # noqa: E402
from ssl_widgets.widgets import Explorer  # noqa: E402


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(explorer: Explorer, request) -> tuple[float, float]:
    """Seconds from ``request()`` to the first occlusion frame and to the refined map."""
    seen = []

    def record(change):
        seen.append((time.perf_counter(), change["new"]))

    explorer.status.observe(record, names="value")
    start = time.perf_counter()
    request()
    explorer.wait()
    explorer.status.unobserve(record, names="value")
    coarse = [t for t, v in seen if "coarse" in v]
    done = [t for t, v in seen if v == "conditional-occlusion"]
    return (coarse[0] if coarse else done[0]) - start, done[-1] - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="tiny-simclr")
    parser.add_argument("--patch", type=int, default=28, help="occlusion patch size (px)")
    parser.add_argument("--stride", type=int, default=4, help="occlusion stride (px)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    explorer = Explorer(model=args.model, threaded=True, method="interaction-cam:max")
    explorer.wait()
    occlusion = explorer.method_controls[0]
    model_size = explorer._model().input_size
    first, full, cam, redraw = [], [], [], []
    explorer.method_tabs.selected_index = 0
    explorer.wait()
    occlusion.stride.value = args.stride
    explorer.wait()
    occlusion.patch.value = args.patch
    explorer.wait()
    first_resampled, resampled, faults = [], [], []
    for _ in range(args.repeats):
        explorer._cache.clear()  # nothing cached: a new request, as after a change of a setting
        explorer.context.models.views.clear()
        before = minor_faults()
        first_frame, refined = timed(explorer, explorer.refresh)
        faults.append(minor_faults() - before)
        first.append(first_frame)
        full.append(refined)
        explorer._cache.clear()
        first_frame, refined = timed(explorer, explorer.resample.click)  # view 2 changes, view 1 is reused
        first_resampled.append(first_frame)
        resampled.append(refined)
    explorer.method_tabs.selected_index = 1
    cam_controls = explorer.method_controls[1]
    for k in range(args.repeats):
        explorer._cache.clear()
        start = time.perf_counter()
        cam_controls.variant.value = ["mean", "max"][k % 2]
        cam.append(time.perf_counter() - start)
        start = time.perf_counter()
        explorer.opacity.value = 0.3 + 0.1 * (k % 4)
        redraw.append(time.perf_counter() - start)
    med = statistics.median
    print(f"model={args.model} threads={args.threads} repeats={args.repeats} (medians)")
    print("| interaction | seconds |\n|---|---|")
    preview = preview_stride(args.patch, [model_size] * 2, multiple_of=args.stride)
    print(f"| first occlusion frame (patch {args.patch}, stride {preview}) | {med(first):.2f} |")
    print(f"| refined occlusion map (patch {occlusion.patch.value}, stride {occlusion.stride.value}) | {med(full):.2f} |")
    print(f"| after a new augmentation of view 2: first frame | {med(first_resampled):.2f} |")
    print(f"| after a new augmentation of view 2: refined map (view 1's copies reused) | {med(resampled):.2f} |")
    print(f"| CAM update (pooling change, uncached) | {med(cam):.3f} |")
    print(f"| opacity redraw | {med(redraw):.3f} |")
    print(f"\nminor page faults per new request (median): {med(faults):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
