"""What each part of the occlusion wing gains on the call it serves, side by side at 1 thread (interleaved runs).

Run: ``python benchmarks/engine_parts.py`` (a few minutes). Results: ``benchmarks/results/engine_parts.md``.
The worker threads need two torch threads, so they are not measured here (``occlusion_speed.md`` has them).
"""
import statistics
import time

import torch

from ssl_widgets.attr import ConditionalOcclusion, CopyEvaluator, ViewEmbeddingStore
from ssl_widgets.explain import default_settings
from ssl_widgets.models import load_model


def clock(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def side_by_side(name: str, fast, slow, n: int = 3) -> None:
    fast(), slow()  # warm: private trunk copy, traced graph, Winograd transforms
    with_, without = [], []
    for _ in range(n):  # interleaved: the shared machine's drift hits both alike
        with_.append(fast())
        without.append(slow())
    a, b = statistics.median(with_), statistics.median(without)
    print(f"{name}: with {a:.2f}s without {b:.2f}s gain {b / a:.2f}x")


def main() -> None:
    torch.set_num_threads(1)
    model = load_model("tiny-simclr").eval()
    g = torch.Generator().manual_seed(0)
    x1, x2, x3 = (torch.rand(1, 3, model.input_size, model.input_size, generator=g) for _ in range(3))
    settings = default_settings("conditional-occlusion", model)
    w, k = settings["sliding_window_shapes"], settings["strides"]
    print(f"tiny-simclr {model.input_size} px, window {w}, stride {k}, threads {torch.get_num_threads()}")

    def refined(pair=(x1, x2), **options):
        return lambda: clock(lambda: ConditionalOcclusion(model, evaluator=CopyEvaluator(model, **options))
                             .attribute(pair, w, k))

    side_by_side("incremental graph (refined map)", refined(), refined(incremental=False), n=1)
    side_by_side("winograd (refined map)", refined(), refined(winograd=False))
    store = ViewEmbeddingStore()
    stored = ConditionalOcclusion(model, evaluator=CopyEvaluator(model, store=store))

    def new_view_2() -> float:
        store.clear()
        stored.attribute((x1, x2), w, k)
        return clock(lambda: stored.attribute((x1, x3), w, k))

    side_by_side("view store (new view 2)", new_view_2, refined((x1, x3)))

    def two_calls() -> float:
        return clock(lambda: (ConditionalOcclusion(model).attribute((x1, x2), w, 2 * k),
                              ConditionalOcclusion(model).attribute((x1, x2), w, k)))

    def in_call() -> float:
        return clock(lambda: ConditionalOcclusion(model).attribute((x1, x2), w, k, on_partial=lambda frame: None,
                                                                   partial_strides=2 * k))

    side_by_side(f"in-call preview (coarse stride {2 * k}; refined map)", in_call, two_calls)


if __name__ == "__main__":
    main()
