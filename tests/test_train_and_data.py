"""Training (resumable, seeded), batched augmentations, images and view transforms."""
import numpy as np
import pytest
import torch
from PIL import Image

from ssl_widgets.data import (
    SAMPLE_IMAGES,
    VIEW_TRANSFORMS,
    list_images,
    load_image,
    make_pair,
    make_view,
    split_holdout,
)
from ssl_widgets.data.augment import (
    SIMCLR_AUGMENT,
    AugmentConfig,
    augment_batch,
    gaussian_blur_batch,
)
from ssl_widgets.models import load_model
from ssl_widgets.train import TrainConfig, train
from ssl_widgets.train.losses import barlow_twins_loss, nt_xent

pytestmark = pytest.mark.both_cores  # training batches large enough for two threads, a command-line run: runs after the background notebooks (tests/conftest.py)


def small_config(folder, out, method="simclr", epochs=2):
    return TrainConfig(method=method, data=str(folder), out=str(out), epochs=epochs, batch_size=4, image_size=32,
                       source_size=40, width=4, head_dims=[16, 8], warmup_epochs=1, checkpoint_every=1, seed=3)


@pytest.mark.parametrize("method", ["simclr", "barlow-twins"])
def test_training_writes_a_loadable_shipped_format_file(image_folder, tmp_path, method):
    out = tmp_path / "model.pt"
    summary = train(small_config(image_folder, out, method), show_progress=False)
    assert summary["train_images"] == 12 and summary["heldout_images"] == 3
    assert np.isfinite(summary["final_loss"])
    model = load_model("tiny-simclr" if method == "simclr" else "tiny-barlow-twins", weights=out)
    assert model.input_size == 32
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 8)


def test_training_resumes_to_the_same_weights(image_folder, tmp_path):
    straight = tmp_path / "straight.pt"
    train(small_config(image_folder, straight, epochs=3), resume=False, show_progress=False)
    resumed = tmp_path / "resumed.pt"
    train(small_config(image_folder, resumed, epochs=3), show_progress=False, max_epochs_this_run=2)
    summary = train(small_config(image_folder, resumed, epochs=3), resume=True, show_progress=False)
    assert len(summary["loss_history"]) == 3
    a = torch.load(straight, weights_only=True)["trunk"]
    b = torch.load(resumed, weights_only=True)["trunk"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_train_rejects_unknown_method(image_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'moco'"):
        small_config(image_folder, tmp_path / "x.pt", method="moco")


def test_losses_prefer_matching_views():
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    other = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    assert nt_xent(z, z) < nt_xent(z, other)
    assert barlow_twins_loss(z, z) < barlow_twins_loss(z, other)


def test_nt_xent_matches_a_plain_loop():
    g = torch.Generator().manual_seed(2)
    z1, z2, tau = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        logits = [float(z[i] @ z[k]) / tau for k in range(6) if k != i]
        denominator = sum(np.exp(v) for v in logits)
        total += -(float(z[i] @ z[positive]) / tau - np.log(denominator))
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / 6, rel=1e-5)


def test_augment_batch_shapes_range_and_determinism():
    images = torch.rand(6, 3, 40, 48)
    a = augment_batch(images, 24, SIMCLR_AUGMENT, torch.Generator().manual_seed(1))
    b = augment_batch(images, 24, SIMCLR_AUGMENT, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 24, 24) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)


def test_identity_augmentation_is_a_resize():
    identity = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0)
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(augment_batch(images, 16, identity, sampling_ratio=1), images, atol=1e-6, rtol=0)


def test_per_image_blur_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur

    images = torch.rand(2, 3, 20, 20)
    out = gaussian_blur_batch(images, torch.tensor([0.7, 1.9]), 7)
    for i, sigma in enumerate([0.7, 1.9]):
        torch.testing.assert_close(out[i], gaussian_blur(images[i], [7, 7], [sigma, sigma]), atol=1e-5, rtol=1e-5)


def test_holdout_split_is_every_fifth(image_folder):
    files = list_images(image_folder)
    train_files, held = split_holdout(files)
    assert held == files[::5] and len(train_files) + len(held) == len(files)
    assert not set(train_files) & set(held)


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        list_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path)


@pytest.mark.parametrize("name", list(SAMPLE_IMAGES))
def test_sample_images_load_offline(name):
    x = load_image(name)
    assert x.dim() == 4 and x.shape[:2] == (1, 3) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.05


def test_load_image_from_path_pil_array_and_tensor(tmp_path):
    array = (np.arange(20 * 30 * 3) % 256).astype(np.uint8).reshape(20, 30, 3)
    Image.fromarray(array).save(tmp_path / "a.png")
    from_path = load_image(tmp_path / "a.png")
    torch.testing.assert_close(from_path, torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(load_image(Image.fromarray(array)), from_path)
    torch.testing.assert_close(load_image(array), from_path)
    torch.testing.assert_close(load_image(from_path[0]), from_path, atol=1 / 255, rtol=0)
    assert load_image(tmp_path / "a.png", 16).shape == (1, 3, 16, 16)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a sample name"):
        load_image("kitten")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="could not read image file"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(TypeError, match="unsupported image type"):
        load_image(42)


@pytest.mark.parametrize("name", VIEW_TRANSFORMS)
def test_view_transforms_are_seeded(name):
    a = make_view("astronaut", name, 64, seed=7)
    b = make_view("astronaut", name, 64, seed=7)
    assert a.shape == (1, 3, 64, 64)
    torch.testing.assert_close(a, b)


def test_seeded_views_equal_torchvision_with_that_seed():
    """make_view(.., seed=s) is the documented torchvision pipeline run right after torch.manual_seed(s); other seeds
    give other views."""
    from torchvision import transforms as T

    from ssl_widgets.data.images import to_pil

    pil = to_pil(load_image("astronaut"))
    pipelines = {  # the module docstring's table at size 64 (kernel 21 scales to 7, 11 to 3)
        "aug": [T.RandomResizedCrop(64), T.RandomHorizontalFlip(0.5),
                T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                T.RandomApply([T.GaussianBlur(7, sigma=(0.1, 2.0))], p=0.5)],
        "color-jitter": [T.Resize(73), T.CenterCrop(64), T.ColorJitter(0.8, 0.8, 0.8, 0.4)],
        "blur": [T.Resize(73), T.CenterCrop(64), T.GaussianBlur(3, sigma=5.0)],
    }
    for name, steps in pipelines.items():
        views = {}
        for seed in (3, 4):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                expected = T.Compose(steps + [T.ToTensor()])(pil)[None]
            views[seed] = make_view("astronaut", name, 64, seed=seed)
            torch.testing.assert_close(views[seed], expected, atol=0, rtol=0, msg=f"{name} seed {seed}")
        if name != "blur":  # the blur view has no randomness
            assert not torch.equal(views[3], views[4]), name


def test_seeded_views_leave_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    make_view("coffee", "aug", 32, seed=1)
    torch.testing.assert_close(torch.rand(3), expected)


def test_photometric_views_keep_geometry():
    x1, x2 = make_pair("coffee", "grayscale", 64)
    gray = (0.299 * x1[:, 0] + 0.587 * x1[:, 1] + 0.114 * x1[:, 2])
    torch.testing.assert_close(x2[:, 0], gray, atol=2 / 255, rtol=0)
    x1, x2 = make_pair("coffee", "solarize", 64)
    torch.testing.assert_close(x2, torch.where(x1 >= 128 / 255, 1 - x1, x1), atol=1.5 / 255, rtol=0)


def test_unknown_view_transform():
    with pytest.raises(ValueError, match="unknown view transform 'sepia'"):
        make_view("coffee", "sepia")


def test_train_from_the_command_line(image_folder, tmp_path):
    """``python -m ssl_widgets.train`` in a fresh process (the settings of a former SIGABRT report) writes a loadable
    file and a summary whose numbers match the settings."""
    import json
    import os
    import sys
    from pathlib import Path

    from helpers import run_processes

    out = tmp_path / "cli.pt"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "ssl_widgets.train", "--method", "barlow-twins", "--data", str(image_folder),
               "--out", str(out), "--epochs", "1", "--threads", "1", "--image-size", "32", "--width", "4",
               "--head-dims", "16,8", "--batch-size", "4", "--no-progress"]
    # the run and a bad method, each in its own fresh process, side by side
    done, bad = run_processes([command, command[:3] + ["--method", "moco"]], env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.with_suffix(".pt.json").read_text())
    assert summary["status"] == "done" and summary["epochs_done"] == 1
    assert summary["train_images"] == 12 and summary["heldout_images"] == 3
    assert summary["arch"]["width"] == 4 and summary["arch"]["head_dims"] == [16, 8]
    model = load_model("tiny-barlow-twins", weights=out)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 8)
    assert bad.returncode == 2 and "invalid choice: 'moco'" in bad.stderr


def test_retrieval_with_an_embedding_of_known_answer(image_folder):
    """Embedding = per-channel mean colour: top-1 equals a plain nearest-neighbour loop over the same views; a constant
    embedding ties everywhere and always answers the first image (top-1 = 1/N)."""
    import torch.nn.functional as F
    from helpers import mean_color_model

    from ssl_widgets.data import list_images as files_of
    from ssl_widgets.models import SSLModel
    from ssl_widgets.train.retrieval import heldout_views, retrieval_top1

    files = split_holdout(files_of(image_folder))[1]
    model = mean_color_model().train()
    top1 = retrieval_top1(model, files, views_per_image=3, seed=2)
    assert model.training  # mode restored
    gallery, queries = heldout_views(files, model.input_size, 3, seed=2)
    g = [F.normalize(im.mean((1, 2)), dim=0) for im in gallery]
    hits = 0
    for q_index, query in enumerate(queries):
        q = F.normalize(query.mean((1, 2)), dim=0)
        scores = [float(q @ row) for row in g]
        hits += scores.index(max(scores)) == q_index % len(g)
    assert top1 == pytest.approx(hits / len(queries))

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 3, 1, 1)

    assert retrieval_top1(SSLModel(Constant(), None, input_size=8), files, views_per_image=2) == pytest.approx(1 / 3)


def test_ssl_widgets_train_subcommand(image_folder, tmp_path, capsys):
    """``ssl-widgets train ...`` (the console script) trains like ``python -m ssl_widgets.train``: a loadable file and
    a summary with finite losses, one per epoch."""
    import json

    from ssl_widgets.cli import main

    out = tmp_path / "cli.pt"
    assert main(["train", "--method", "simclr", "--data", str(image_folder), "--out", str(out), "--epochs", "2",
                 "--image-size", "32", "--width", "4", "--head-dims", "16,8", "--batch-size", "4",
                 "--no-progress"]) == 0
    summary = json.loads(out.with_suffix(".pt.json").read_text())
    assert summary["status"] == "done" and summary["epochs_done"] == 2 and summary["method"] == "simclr"
    assert len(summary["loss_history"]) == 2 and all(np.isfinite(v) and v > 0 for v in summary["loss_history"])
    assert summary["train_images"] == 12 and summary["heldout_images"] == 3
    model = load_model("tiny-simclr", weights=out)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 8)
    top1 = summary["heldout_top1_seed1"]
    assert top1 is None or 0.0 <= top1 <= 1.0
    with pytest.raises(SystemExit) as refused:
        main(["train", "--method", "moco", "--data", str(image_folder), "--out", str(out)])
    assert refused.value.code == 2 and "invalid choice: 'moco'" in capsys.readouterr().err


def strict_json(text):
    """``json.loads`` that refuses NaN and Infinity (not JSON, though Python's json writes them by default)."""
    import json

    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_diverging_run_stops_as_diverged_and_keeps_only_finite_weights(image_folder, tmp_path, monkeypatch):
    """The loss turns NaN in epoch 2 (of 3): the run stops there with status "diverged", the summary is valid JSON
    without NaN, and the weight file holds epoch 1's (finite, loadable) weights, its metadata saying "diverged"."""
    from ssl_widgets.train import loop

    calls = []

    def nan_from_epoch_2(z1, z2, temperature):  # 12 training images, batch 4: three steps per epoch
        calls.append(1)
        loss = nt_xent(z1, z2, temperature)
        return loss * float("nan") if len(calls) > 3 else loss

    monkeypatch.setattr(loop, "nt_xent", nan_from_epoch_2)
    out = tmp_path / "model.pt"
    cfg = small_config(image_folder, out, epochs=3)
    cfg.eval_every = 1
    summary = train(cfg, show_progress=False)
    assert summary["status"] == "diverged" and summary["epochs_done"] == 1
    assert "diverged in epoch 2: the mean loss is nan" in summary["diverged"]
    written = strict_json(out.with_suffix(".pt.json").read_text())
    assert written["status"] == "diverged" and len(written["loss_history"]) == 1
    assert np.isfinite(written["final_loss"])
    model = load_model("tiny-simclr", weights=out)  # refuses non-finite weights: these are epoch 1's
    assert model.meta["status"] == "diverged" and model.meta["chosen_epoch"] == 1
    checkpoint = torch.load(out.with_suffix(".pt.ckpt"), weights_only=True)
    assert checkpoint["epoch"] == 1  # no checkpoint of the diverged epoch
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_a_run_diverging_at_once_writes_no_weights(image_folder, tmp_path):
    """A learning rate of 1e20 overflows the weights in the first epoch: no weight file, status "diverged"."""
    out = tmp_path / "model.pt"
    cfg = small_config(image_folder, out, epochs=2)
    cfg.lr = 1e20
    summary = train(cfg, show_progress=False)
    assert summary["status"] == "diverged" and summary["epochs_done"] == 0 and "epoch 1" in summary["diverged"]
    assert not out.exists()
    written = strict_json(out.with_suffix(".pt.json").read_text())
    assert written["status"] == "diverged" and written["final_loss"] is None and written["loss_history"] == []
