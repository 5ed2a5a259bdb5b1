"""Reuse of one image's occluded-copy embeddings across occlusion calls (ViewEmbeddingStore)."""
import threading

import pytest
import torch
from helpers import arange_image

from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion, CopyEvaluator, ViewEmbeddingStore
from ssl_widgets.attr._occlusion_engine.evaluator import Session
from ssl_widgets.models.zoo import build_tiny_model
from ssl_widgets.widgets import Explorer

@pytest.fixture
def model(tiny_model):
    return tiny_model


@pytest.fixture
def copies(monkeypatch):
    """How many perturbed copies the occlusion methods embed (a list: one count per call)."""
    counted, lock = [], threading.Lock()
    embed = Session.embed

    def counting(self, state, local, *args):
        with lock:  # the batches run in worker threads
            counted[-1] += local.shape[0]
        return embed(self, state, local, *args)

    monkeypatch.setattr(Session, "embed", counting)
    return counted


def images():
    return arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5.0), arange_image(1, 32, 32, offset=9.0)


def run(method, pair, counted, **kw):
    counted.append(0)
    return method.attribute(pair, 16, 8, **kw)


@pytest.mark.parametrize("cls, per_window", [(ConditionalOcclusion, 1), (ContextAgnosticOcclusion, 2)])
def test_an_unchanged_image_is_not_evaluated_again_and_the_maps_equal_a_fresh_call(model, copies, cls, per_window):
    x1, x2, x3 = images()
    store = ViewEmbeddingStore()
    method = cls(model, evaluator=CopyEvaluator(model, store=store))
    windows = 9 * per_window  # 3 x 3 windows of 16 px at stride 8 on 32 px
    run(method, (x1, x2), copies)
    reused = run(method, (x1, x3), copies)  # view 1 unchanged
    swapped = run(method, (x3, x1), copies)  # both known, in the other order
    assert copies == [2 * windows, windows, 0]
    assert store.hits == 3 and len(store) == 3
    for got, pair in ((reused, (x1, x3)), (swapped, (x3, x1))):
        fresh = run(cls(model), pair, copies)
        for k in range(2):
            torch.testing.assert_close(got[k], fresh[k], atol=1e-6, rtol=0)
        assert got.similarity.item() == pytest.approx(fresh.similarity.item(), abs=1e-6)
    assert copies[-2:] == [2 * windows, 2 * windows]  # an evaluator without a store keeps nothing
    assert len(store) == 3


def test_nothing_is_reused_when_what_the_copies_depend_on_changes(model, copies):
    x1, x2, _ = images()
    store = ViewEmbeddingStore()

    def method(cls, of=model, **options):
        return cls(of, evaluator=CopyEvaluator(of, store=store, **options))

    run(method(ConditionalOcclusion), (x1, x2), copies)
    copies.append(0)
    method(ConditionalOcclusion).attribute((x1, x2), 16, 4)  # other corners
    copies.append(0)
    method(ConditionalOcclusion).attribute((x1, x2), 8, 8)  # other window
    run(method(ConditionalOcclusion), (x1, x2), copies, baselines=0.3)  # other fill
    run(method(ContextAgnosticOcclusion), (x1, x2), copies)  # other method
    run(method(ConditionalOcclusion), (x1, x2), copies, incremental=False)  # other evaluation
    run(method(ConditionalOcclusion, winograd=False), (x1, x2), copies)  # other kernels
    torch.manual_seed(1)
    other = build_tiny_model({"width": 8, "head_dims": [32, 16], "input_size": 32}).eval()
    run(method(ConditionalOcclusion, other), (x1, x2), copies)  # other model
    with torch.no_grad():
        model.trunk.conv1.weight.mul_(0.5)
    run(method(ConditionalOcclusion), (x1, x2), copies)  # same model, new trunk weights
    head = next(p for name, p in model.named_parameters() if not name.startswith("trunk."))
    with torch.no_grad():
        head.add_(0.1)
    changed = run(method(ConditionalOcclusion), (x1, x2), copies)  # same trunk, new head weights
    assert copies == [18, 2 * 25, 2 * 16, 18, 36, 18, 18, 18, 18, 18]
    assert store.hits == 0
    fresh = ConditionalOcclusion(model).attribute((x1, x2), 16, 8)
    torch.testing.assert_close(changed[0], fresh[0], atol=1e-6, rtol=0)


def test_the_store_is_the_evaluators_and_is_bounded(model, copies):
    x1, x2, x3 = images()
    store = ViewEmbeddingStore(max_entries=2)
    method = ConditionalOcclusion(model, evaluator=CopyEvaluator(model, store=store))
    run(method, (x1, x2), copies)
    run(method, (x1, x3), copies)
    with pytest.raises(ValueError, match="stride"):
        method.attribute((x1, x2), 8, 16)  # bad input
    assert len(store) == 2  # x1, x2, x3 seen: the least recently used (x2) was dropped
    run(ConditionalOcclusion(model), (x1, x3), copies)  # another evaluator: no store
    assert store.hits == 1 and copies[-1] == 18
    with pytest.raises(ValueError, match="max_entries"):
        ViewEmbeddingStore(max_entries=0)
    with pytest.raises(ValueError, match="another model"):
        ConditionalOcclusion(model, evaluator=CopyEvaluator(build_tiny_model({"width": 8, "head_dims": [32, 16],
                                                                              "input_size": 32})))
    with pytest.raises(TypeError, match="evaluator"):
        ConditionalOcclusion(model, evaluator=store)
    store.clear()
    assert len(store) == 0


@pytest.mark.parametrize("batch", [4, 9, 100])
def test_progress_reaches_its_total_when_a_view_is_reused(model, batch):
    x1, x2, x3 = images()
    reports = []
    method = ConditionalOcclusion(model, evaluator=CopyEvaluator(model, store=ViewEmbeddingStore()))
    method.attribute((x1, x2), 16, 8, perturbations_per_eval=batch, on_progress=lambda *at: reports.append(at))
    assert reports[-1] == (-(-18 // batch),) * 2
    reports.clear()
    method.attribute((x1, x3), 16, 8, perturbations_per_eval=batch,
                     on_progress=lambda *at: reports.append(at))  # 9 of 18 reused
    assert reports[-1] == (-(-18 // batch),) * 2


def test_explorer_recomputes_only_view_2_after_a_new_augmentation(copies):
    e = Explorer(threaded=False, display_size=64, method="grad-cam")
    controls = e.method_controls[0]
    controls.patch.value = 56
    controls.stride.value = 28  # 3 x 3 windows per image at 112 px, no coarse preview
    copies.append(0)
    e.method_tabs.selected_index = 0
    assert e.status.value == "conditional-occlusion" and copies == [18]
    copies.append(0)
    e.resample.click()  # a new augmentation of view 2: view 1's copies are reused
    assert e.status.value == "conditional-occlusion" and copies[-1] == 9
    x1, x2 = e.current_pair()
    fresh = ConditionalOcclusion(e._model()).attribute((x1, x2), 56, 28)
    torch.testing.assert_close(e.maps[0], fresh[0][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(e.maps[1], fresh[1][0], atol=1e-6, rtol=0)
