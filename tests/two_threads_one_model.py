"""Two threads on one model; run in a subprocess by test_reliability.py (a crash must not kill the suite).

Occlusion, guided Input x Gradient and Grad-CAM loop in three threads on one model that starts in
train mode with a mixed set of ``requires_grad`` flags. Prints ``OK`` when the weights and BatchNorm
buffers are bit-identical afterwards, flags, modes and memory format are restored, and every result
equals the single-thread result.
"""
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import small_resnet

from ssl_widgets.attr import ConditionalOcclusion, PairGradCAM, PairInputXGradient

torch.set_num_threads(1)
model = small_resnet(width=4)
model.train()  # BatchNorm would update its running statistics if a forward ran in train mode
model.head[0].weight.requires_grad_(False)  # a mixed set of flags to restore
before = {k: v.clone() for k, v in model.state_dict().items()}
flags = {n: p.requires_grad for n, p in model.named_parameters()}
g = torch.Generator().manual_seed(0)
x1, x2 = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)


def occlusion():
    return ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=8, strides=4, perturbations_per_eval=4)


def gradient():
    return PairInputXGradient(model).attribute((x1, x2), guided=True)


def cam():
    return PairGradCAM(model, "layer3").attribute((x1, x2))


methods = [(occlusion, 6), (gradient, 40), (cam, 40)]
single = [f() for f, _ in methods]
errors: list[str] = []
results: dict[int, list] = {i: [] for i in range(len(methods))}


def loop(i, f, n):
    try:
        for _ in range(n):
            results[i].append(f())
    except Exception as error:  # noqa: BLE001 - reported below
        errors.append(repr(error))


threads = [threading.Thread(target=loop, args=(i, f, n)) for i, (f, n) in enumerate(methods)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
after = model.state_dict()
changed = [k for k in before if not torch.equal(before[k], after[k])]
assert not changed, f"weights or BatchNorm buffers changed: {changed[:5]}"
assert {n: p.requires_grad for n, p in model.named_parameters()} == flags, "requires_grad flags not restored"
assert all(m.training for m in model.modules()), "training flags not restored"
assert all(p.is_contiguous() for p in model.parameters()), "weights left channels-last"
for i, reference in enumerate(single):
    assert len(results[i]) == methods[i][1]
    for result in results[i]:
        for a, b in zip(result, reference):
            assert torch.equal(a, b), f"a result of {methods[i][0].__name__} differs from the single-thread result"
print("OK")
