"""Regression tests of issue 14 (reliability): one test (or a few) per defect, each failing before its fix."""
import dataclasses
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import arange_image, small_resnet
from PIL import Image

from ssl_widgets.attr import (
    AveragedTransforms,
    ConditionalOcclusion,
    ContextAgnosticOcclusion,
    InteractionCAM,
    PairGradCAM,
    PairInputXGradient,
    PairSmoothGrad,
    PairwiseOcclusion,
    PixelInvariance,
)
from ssl_widgets.attr import CopyEvaluator
from ssl_widgets.evaluate import EvaluationConfig, evaluate
from ssl_widgets.evaluate.driver import SettingsMismatch, UnreadableImage
from ssl_widgets.metrics import average_drop_increase, insertion_deletion
from ssl_widgets.models import CheckpointError, download, load_model, registry, tiny, zoo
from ssl_widgets.models.zoo import build_tiny_model, save_tiny_checkpoint

HERE = Path(__file__).parent


# -- 1. two threads on one model ------------------------------------------------------------------

@pytest.mark.background_process(
    [sys.executable, str(HERE / "two_threads_one_model.py")], timeout=240,
    env={"PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"})
def test_two_threads_on_one_model_leave_it_intact_and_agree_with_one_thread(background_process):
    done = background_process
    assert done.returncode == 0 and "OK" in done.stdout, (done.returncode, done.stderr[-3000:])


def test_explorer_waits_for_the_previous_job(monkeypatch):
    from ssl_widgets.widgets import explorer as explorer_module

    active, overlaps = [], []
    real = explorer_module.explain_pair

    def tracked(*args, **kwargs):
        if active:
            overlaps.append(True)
        active.append(1)
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            active.pop()

    monkeypatch.setattr(explorer_module, "explain_pair", tracked)
    panel = explorer_module.Explorer(small_resnet(), images="chelsea", method="conditional-occlusion")
    for seed in range(1, 6):  # each change starts a job while the previous one may still run
        panel.seed.value = seed
    panel.wait(120)
    time.sleep(0.2)
    assert not overlaps and panel.last_error is None


# -- 2. evaluation resume keyed by the settings ----------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_images")
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / f"im{i}.png")
    return root


def config(folder, out, **kwargs):
    base = dict(data=str(folder), model="tiny-simclr", methods=["grad-cam"], pairs=2, seed=0, out=str(out),
                step=1792, sensitivity_samples=1, show_progress=False)
    base.update(kwargs)
    return EvaluationConfig(**base)


def test_evaluation_resume_refuses_records_of_other_settings(folder, tmp_path):
    out = tmp_path / "run"
    evaluate(config(folder, out))
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[0]["settings"]["seed"] == 0 and records[0]["settings"]["model"] == "tiny-simclr"
    table = (out / "table.md").read_text()
    for change, field in (({"seed": 1}, "seed"), ({"model": "tiny-barlow-twins"}, "model"),
                          ({"transform": "combine"}, "transform"), ({"step": 448}, "step")):
        with pytest.raises(SettingsMismatch, match=f"{field}: .* in the records.*another --out"):
            evaluate(config(folder, out, **change))
    assert (out / "table.md").read_text() == table  # the old numbers were not retitled
    # records of an older version (no settings) are refused too
    for r in records:
        r.pop("settings")
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SettingsMismatch, match="older version"):
        evaluate(config(folder, out))


# -- 3. unreadable images --------------------------------------------------------------------------

def test_unreadable_image_is_skipped_counted_and_strict_fails(folder, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for path in folder.iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="broken.jpg"):
        summary = evaluate(config(data, out, pairs=4))
    table = (out / "table.md").read_text()
    assert "1 of 4 pairs skipped: 1 unreadable image (broken.jpg)" in table
    assert summary["grad-cam"]["pairs"] == 3
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    with pytest.raises(UnreadableImage, match="broken.jpg"):
        evaluate(config(data, tmp_path / "strict", pairs=4, strict=True))


# -- 5. memory bounded by perturbations_per_eval ---------------------------------------------------

def peak_allocated(fn) -> int:
    """Peak bytes held by torch's CPU allocator during ``fn()`` (profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    assert totals, "the profiler recorded no allocation"
    return max(totals)


def test_pairwise_occlusion_memory_does_not_grow_with_n_samples():
    model = small_resnet()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)

    def run(n):
        return lambda: PairwiseOcclusion(model).attribute((x1, x2), n_samples=n, perturbations_per_eval=25,
                                                          generator=torch.Generator().manual_seed(0))

    few, many = peak_allocated(run(50)), peak_allocated(run(400))
    # keeping every mask would add 400 x 64 x 64 x (2 bools + 4 bytes) = 9.8 MB; allow 64 KiB of noise
    assert many <= few + 64 * 1024, (few, many)


def test_window_map_memory_does_not_grow_with_the_number_of_windows():
    # the profiler records the calling thread's memory events only: batches in this thread (the bound on the
    # copies the CPU worker threads hold at once is tested in test_pipeline.py)
    model = small_resnet()
    evaluator = CopyEvaluator(model, workers=1)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)

    def run(stride):
        return lambda: ConditionalOcclusion(model, evaluator=evaluator).attribute((x1, x2), sliding_window_shapes=32, strides=stride,
                                                             perturbations_per_eval=16, incremental=False)

    coarse, fine = peak_allocated(run(8)), peak_allocated(run(1))  # 25 vs 1089 windows per image
    # the grid itself grows (1089 values); window^2 x windows floats would add 32*32*1089*4 = 4.5 MB
    assert fine <= coarse + 256 * 1024, (coarse, fine)


# -- 6. trust-on-first-use pin -----------------------------------------------------------------------

def _tiny_file(path, seed=0):
    arch = {"width": 4, "head_dims": [16, 8], "input_size": 32}
    with torch.random.fork_rng(devices=[]):  # the global RNG is seeded for the build and restored after it
        torch.manual_seed(seed)
        model = build_tiny_model(arch)
    save_tiny_checkpoint(model, arch, path)


@pytest.fixture
def cached_spec(torch_home, monkeypatch):
    """A published-style zoo entry (no known hash) whose file lives in the test's torch.hub cache."""
    spec = dataclasses.replace(zoo.model_info("tiny-simclr"), name="tiny-cached", url="http://127.0.0.1:9/x.pt",
                               file_name="tiny-cached.pt", build=tiny.tiny_builder("tiny-cached"))
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    return spec, torch_home / "hub" / "checkpoints" / spec.file_name


def test_pin_only_a_file_that_loaded_and_name_the_pin_to_delete(cached_spec, tmp_path):
    spec, placed = cached_spec
    pin = placed.with_name(placed.name + ".sha256")
    good = tmp_path / "good.pt"
    _tiny_file(good)
    placed.write_bytes(good.read_bytes()[:2000])  # a half-downloaded file
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_model(spec.name)
    assert not pin.exists()  # the broken file was not pinned
    placed.write_bytes(good.read_bytes())
    load_model(spec.name)
    assert pin.read_text().strip() == download._sha256(placed)
    _tiny_file(placed, seed=1)  # another (valid) file in its place
    with pytest.raises(CheckpointError) as info:
        load_model(spec.name)
    message = str(info.value)
    assert str(placed) in message and f"delete the pin file {pin}" in message


# -- 7. downloads time out -------------------------------------------------------------------------

def test_download_times_out_with_the_url_and_the_place_for_the_file(cached_spec, monkeypatch):
    spec, placed = cached_spec
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []

    def accept_and_say_nothing():
        try:
            while True:
                held.append(server.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/tiny-cached.pt"
    monkeypatch.setitem(registry._REGISTRY, spec.name, dataclasses.replace(spec, url=url))
    monkeypatch.setenv("SSL_WIDGETS_DOWNLOAD_TIMEOUT", "1")
    outcome = []

    def load():
        try:
            load_model(spec.name)
        except Exception as error:  # noqa: BLE001 - inspected below
            outcome.append(error)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(30)
    try:
        assert not worker.is_alive(), "load_model still waits for a server that never answers"
        (error,) = outcome
        message = str(error)
        assert isinstance(error, FileNotFoundError) and url in message and str(placed) in message
        assert "no answer within 1 s" in message and "SSL_WIDGETS_DOWNLOAD_TIMEOUT" in message
        assert not placed.exists() and not list(placed.parent.glob("*.partial"))
    finally:
        server.close()
        for conn in held:
            conn.close()


# -- 8. layers whose hook would show another layer's map -------------------------------------------

def test_cam_refuses_layers_modified_in_place_or_reused():
    model = small_resnet()
    pair = (arange_image(1, 32, 32), arange_image(1, 32, 32, offset=4))
    with pytest.raises(ValueError, match=r"'layer4\.0\.bn2' .* modified in place.*'layer4\.0'"):
        PairGradCAM(model, "layer4.0.bn2").attribute(pair)
    with pytest.raises(ValueError, match=r"'layer1\.0\.relu' .* runs 2 times per forward pass.*'layer1\.0'"):
        InteractionCAM(model, "layer1.0.relu").attribute(pair)
    with pytest.raises(ValueError, match="modified in place"):  # two forwards (images of different sizes)
        PairGradCAM(model, "layer2.0.bn1").attribute((pair[0], arange_image(1, 40, 40)))
    assert PairGradCAM(model, "layer4.0.conv2").attribute(pair)[0].shape == (1, 1, 1)
    assert PairGradCAM(model, "layer4.0").attribute(pair)[0].shape == (1, 1, 1)


# -- 9. pixel range ------------------------------------------------------------------------------------

def test_values_outside_the_pixel_range_are_refused_with_how_to_convert():
    model = small_resnet()
    x = arange_image(1, 32, 32)
    for bad, hint in ((x * 255, r"x / 255"), (x * 2 - 1, r"\(x \+ 1\) / 2")):
        for call in (lambda v: PairInputXGradient(model).attribute((v, x)),
                     lambda v: ConditionalOcclusion(model).attribute((x, v), sliding_window_shapes=16, strides=16),
                     lambda v: PixelInvariance(model).attribute(v, n_samples=4, epochs=1, size=8),
                     lambda v: insertion_deletion(model, v, x, torch.ones(1, 32, 32), mode="insertion")):
            with pytest.raises(ValueError, match=f"outside the pixel range.*{hint}"):
                call(bad)
    # a small overshoot (resampling, Captum's small perturbations) is within the tolerance
    PairInputXGradient(model).attribute(((x + 0.02).clamp(max=1.02), x))


# -- 10. dtypes, requires_grad, argument errors, tiny checkpoint without arch -------------------------

def test_float64_and_float16_inputs_are_converted_to_the_model_dtype():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=2)
    expected = PairGradCAM(model).attribute((x1, x2))
    for dtype in (torch.float64, torch.float16):
        result = PairGradCAM(model).attribute((x1.to(dtype), x2.to(dtype)))
        assert result[0].dtype == torch.float32
        torch.testing.assert_close(result[0], expected[0], atol=1e-2, rtol=1e-2)
    occluded = ConditionalOcclusion(model).attribute((x1.double(), x2.double()), sliding_window_shapes=16, strides=8)
    assert occluded[0].dtype == torch.float32
    assert float(average_drop_increase(model, x1.double(), x2.double(), expected[0]).drop[0]) >= 0


def test_inputs_that_require_grad_give_detached_maps_everywhere():
    model = small_resnet()
    x1 = arange_image(1, 32, 32).requires_grad_(True)
    x2 = arange_image(1, 32, 32, offset=3).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    results = [
        PairGradCAM(model).attribute((x1, x2)),
        InteractionCAM(model).attribute((x1, x2)),
        PairInputXGradient(model).attribute((x1, x2)),
        PairSmoothGrad(model).attribute((x1, x2), n_samples=2, generator=g),
        AveragedTransforms(model).attribute((x1, x2), steps=3),
        ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=16, strides=8),
        ContextAgnosticOcclusion(model).attribute((x1, x2), sliding_window_shapes=16, strides=8),
        PairwiseOcclusion(model).attribute((x1, x2), n_samples=4, generator=g),
    ]
    for result in results:
        assert not result[0].requires_grad and not result[1].requires_grad and not result.similarity.requires_grad
    heat = PixelInvariance(model).attribute(x1, n_samples=8, epochs=2, size=8, generator=g)
    assert heat.shape == (1, 8, 8) and not heat.requires_grad
    assert x1.grad is None and x2.grad is None


def test_bad_arguments_name_the_argument():
    model = small_resnet()
    pair = (arange_image(1, 32, 32), arange_image(1, 32, 32, offset=1))
    cases = [
        (lambda: PairwiseOcclusion(model).attribute(pair, perturbations_per_eval=0), ValueError, "perturbations_per_eval"),
        (lambda: PairwiseOcclusion(model).attribute(pair, n_samples=0), ValueError, "n_samples"),
        (lambda: PairwiseOcclusion(model).attribute(pair, scale=(2, 3)), ValueError, "scale"),
        (lambda: PairwiseOcclusion(model).attribute(pair, ratio=(0, 1)), ValueError, "ratio"),
        (lambda: PairwiseOcclusion(model).attribute(pair, n_samples=2.5), TypeError, "n_samples"),
        (lambda: PairSmoothGrad(model).attribute(pair, perturbations_per_eval=0), ValueError, "perturbations_per_eval"),
        (lambda: PixelInvariance(model).attribute(pair[0], perturbations_per_eval=0), ValueError,
         "perturbations_per_eval"),
        (lambda: PixelInvariance(model).attribute(pair[0], n_samples=0), ValueError, "n_samples"),
        (lambda: ConditionalOcclusion(model).attribute(pair, sliding_window_shapes=8.0), TypeError,
         "sliding_window_shapes"),
        (lambda: ConditionalOcclusion(model).attribute(pair, sliding_window_shapes=8, strides=4,
                                                       baselines=float("nan")), ValueError, "baselines"),
        (lambda: ConditionalOcclusion(model).attribute(pair, sliding_window_shapes=8, strides=4,
                                                       baselines=torch.full((3,), float("nan"))), ValueError,
         "baselines"),
    ]
    for call, error, name in cases:
        with pytest.raises(error, match=name):
            call()


def test_tiny_checkpoint_without_arch_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "no_arch.pt"
    _tiny_file(path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["arch"]
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="'arch', 'trunk' and 'head'"):
        load_model("tiny-simclr", weights=path)
