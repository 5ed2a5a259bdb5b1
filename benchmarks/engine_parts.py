"""What each part of the occlusion wing gains on the call it serves, side by side at 1 thread (interleaved runs).

Run: ``python benchmarks/engine_parts.py`` (a few minutes). Results: ``benchmarks/results/engine_parts.md``.
The worker threads need two torch threads, so they are not measured here (``occlusion_speed.md`` has them).
"""
import statistics
import time

import torch

torch.set_num_threads(1)

from ssl_widgets.models import load_model
from ssl_widgets.attr import ConditionalOcclusion, CopyEvaluator, ViewEmbeddingStore
from ssl_widgets.attr._occlusion_engine import winograd as wg
from ssl_widgets.explain import default_settings

model = load_model("tiny-simclr").eval()
s = model.input_size
g = torch.Generator().manual_seed(0)
x1, x2, x3 = (torch.rand(1, 3, s, s, generator=g) for _ in range(3))
st = default_settings("conditional-occlusion", model)
w, k = st["sliding_window_shapes"], st["strides"]
print("tiny-simclr", s, "px, window", w, "stride", k, "threads", torch.get_num_threads())
calls = [0]
orig = wg.winograd_conv3x3
def counted(*a):
    calls[0] += 1
    return orig(*a)
wg.winograd_conv3x3 = counted
def occ(**ev):
    return ConditionalOcclusion(model, evaluator=CopyEvaluator(model, **ev))
occ().attribute((x1, x2), w, k)
print("winograd calls in one refined call:", calls[0])

def clock(f):
    a = time.perf_counter(); f(); return time.perf_counter() - a

def pairs(name, fast, slow, n=3):
    fast(); slow()
    f, sl = [], []
    for _ in range(n):
        f.append(clock(fast)); sl.append(clock(slow))
    mf, ms = statistics.median(f), statistics.median(sl)
    print(f"{name}: with {mf:.2f}s (runs {', '.join(f'{v:.2f}' for v in f)}) without {ms:.2f}s "
          f"(runs {', '.join(f'{v:.2f}' for v in sl)}) gain {ms / mf:.2f}x")

pairs("incremental graph (refined call)", lambda: occ().attribute((x1, x2), w, k),
      lambda: occ(incremental=False).attribute((x1, x2), w, k), n=1)
pairs("winograd (refined call)", lambda: occ().attribute((x1, x2), w, k), lambda: occ(winograd=False).attribute((x1, x2), w, k))
store = ViewEmbeddingStore()
ev = CopyEvaluator(model, store=store)
def with_store():
    store.clear(); ConditionalOcclusion(model, evaluator=ev).attribute((x1, x2), w, k)
    return clock(lambda: ConditionalOcclusion(model, evaluator=ev).attribute((x1, x3), w, k))
f, sl = [], []
for _ in range(3):
    f.append(with_store()); sl.append(clock(lambda: occ().attribute((x1, x3), w, k)))
print(f"view store (only view 2 new): with {statistics.median(f):.2f}s without {statistics.median(sl):.2f}s gain {statistics.median(sl) / statistics.median(f):.2f}x")
coarse = 2 * k
def in_call():
    first = []
    a = time.perf_counter()
    occ().attribute((x1, x2), w, k, on_partial=lambda fr: first.append(time.perf_counter() - a), partial_strides=coarse)
    return first[0], time.perf_counter() - a
def separate():
    a = time.perf_counter(); occ().attribute((x1, x2), w, coarse); f = time.perf_counter() - a
    occ().attribute((x1, x2), w, k); return f, time.perf_counter() - a
ic, sp = [], []
for _ in range(3):
    ic.append(in_call()); sp.append(separate())
m = lambda xs, i: statistics.median(x[i] for x in xs)
print(f"in-call preview (coarse stride {coarse}): first frame {m(ic, 0):.2f}s refined {m(ic, 1):.2f}s; separate calls: "
      f"first {m(sp, 0):.2f}s refined {m(sp, 1):.2f}s; refined-map gain {m(sp, 1) / m(ic, 1):.2f}x")
