"""SimSiam and DINO objectives and training, safe resume, held-out best-checkpoint selection, the CLI."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import write_image_folder

from ssl_widgets.models import available_models, load_model
from ssl_widgets.models.tiny_vit import DINOHead, build_tiny_vit_backbone
from ssl_widgets.train import TrainConfig, train
from ssl_widgets.train.__main__ import build_parser
from ssl_widgets.train.__main__ import main as train_main
from ssl_widgets.train.common import UnsafeCheckpointError, load_training_state
from ssl_widgets.train.dino import _DINORunner
from ssl_widgets.train.losses import dino_loss, distillation_nce, simsiam_loss, update_center
from ssl_widgets.train.loop import load_dataset


@pytest.fixture(scope="module")
def ten_images(tmp_path_factory):
    """Ten images (8 training, 2 held out): fewer than conftest's 15, for faster training runs."""
    return write_image_folder(tmp_path_factory.mktemp("images"), n=10, height=40, width=48, seed=1)


def cnn_config(folder, out, method, epochs=1, head_dims=(16, 8), **kw):
    return TrainConfig(method=method, data=str(folder), out=str(out), epochs=epochs, batch_size=4, image_size=32,
                       source_size=40, width=4, head_dims=list(head_dims), warmup_epochs=1, checkpoint_every=1, seed=5,
                       eval_every=1, **kw)


def vit_config(folder, out, epochs=1, **kw):
    return TrainConfig(method="dino", data=str(folder), out=str(out), epochs=epochs, batch_size=4, image_size=32,
                       source_size=40, patch_size=8, embed_dim=16, depth=1, num_heads=2, out_dim=32,
                       local_crops=2, local_size=16, warmup_epochs=1, checkpoint_every=1, seed=5, eval_every=1, **kw)


# -- objectives ------------------------------------------------------------------------------------

def test_simsiam_loss_of_identical_inputs_is_minus_one_and_stops_gradients():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g)
    assert float(simsiam_loss(z, z, z, z)) == pytest.approx(-1.0, abs=1e-6)
    p1, p2 = torch.randn(5, 7, generator=g, requires_grad=True), torch.randn(5, 7, generator=g, requires_grad=True)
    z1, z2 = torch.randn(5, 7, generator=g, requires_grad=True), torch.randn(5, 7, generator=g, requires_grad=True)
    loss = simsiam_loss(p1, p2, z1, z2)
    expected = 0.0
    for i in range(5):  # plain loop: -cos(p1_i, z2_i)/2 - cos(p2_i, z1_i)/2, batch mean
        for p, z_ in ((p1, z2), (p2, z1)):
            a, b = p[i].detach().numpy(), z_[i].detach().numpy()
            expected -= 0.5 * float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) / 5
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on the projections
    assert p1.grad is not None and float(p1.grad.abs().sum()) > 0


def test_dino_loss_equals_a_slow_loop():
    g = torch.Generator().manual_seed(1)
    batch, k, n_crops = 3, 6, 4
    student = torch.randn(n_crops * batch, k, generator=g)
    teacher = torch.randn(2 * batch, k, generator=g)
    center = torch.randn(1, k, generator=g)
    ts, tt = 0.1, 0.04
    total, terms = 0.0, 0
    for iq in range(2):
        for v in range(n_crops):
            if v == iq:
                continue
            pair = 0.0
            for b in range(batch):
                t_logits = [(float(teacher[iq * batch + b, j]) - float(center[0, j])) / tt for j in range(k)]
                t_max = max(t_logits)
                t_prob = [math.exp(x - t_max) for x in t_logits]
                t_prob = [x / sum(t_prob) for x in t_prob]
                s_logits = [float(student[v * batch + b, j]) / ts for j in range(k)]
                s_lse = max(s_logits) + math.log(sum(math.exp(x - max(s_logits)) for x in s_logits))
                pair += -sum(t_prob[j] * (s_logits[j] - s_lse) for j in range(k))
            total += pair / batch
            terms += 1
    assert terms == 2 * n_crops - 2
    assert float(dino_loss(student, teacher, center, 2, ts, tt)) == pytest.approx(total / terms, rel=1e-5)


def test_distillation_nce_equals_a_slow_loop():
    torch.manual_seed(0)
    batch, crops, n_global, dim, temp = 3, 4, 2, 5, 0.2
    student, teacher, queue = torch.randn(crops * batch, dim), torch.randn(n_global * batch, dim), torch.randn(6, dim)
    queue = F.normalize(queue, dim=1)
    total, terms = 0.0, 0
    for g in range(n_global):
        bank = [F.normalize(teacher[g * batch + j], dim=0) for j in range(batch)] + list(queue)
        for v in range(crops):
            for i in range(batch):
                s = F.normalize(student[v * batch + i], dim=0)
                scores = [float(s @ t) / temp for t in bank]
                total += -(scores[i] - math.log(sum(math.exp(x) for x in scores)))
                terms += 1
    assert float(distillation_nce(student, teacher, n_global, queue, temp)) == pytest.approx(total / terms, rel=1e-5)
    without = float(distillation_nce(student, teacher, n_global, None, temp))
    assert without < float(distillation_nce(student, teacher, n_global, queue, temp))  # more negatives, harder


def test_dino_starts_from_a_file_and_distils_towards_a_frozen_model(ten_images, tmp_path):
    first = tmp_path / "first.pt"
    train(vit_config(ten_images, first, epochs=1), show_progress=False)
    cfg = vit_config(ten_images, tmp_path / "second.pt", epochs=1, init_from=str(first), distill_from="tiny-simclr",
                     global_size=24)
    images, _, _ = load_dataset(cfg)
    runner = _DINORunner(cfg, images, torch.device("cpu"))
    packed = torch.load(first, weights_only=True)
    for key, value in packed["trunk"].items():  # student and teacher start from the file's teacher
        torch.testing.assert_close(runner.student.state_dict()[key], value.float())
        torch.testing.assert_close(runner.teacher.state_dict()[key], value.float())
    for key, value in packed["dino_head"].items():
        torch.testing.assert_close(runner.teacher_head.state_dict()[key], value.float())
    optimised = {id(p) for group in runner.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in runner.projector.parameters())
    assert not any(id(p) in optimised or p.requires_grad for p in runner.distiller.parameters())
    frozen = {k: v.clone() for k, v in runner.distiller.state_dict().items()}
    assert np.isfinite(runner.epoch(0, 1))
    assert runner.queue.shape == (runner.steps_per_epoch * 2 * cfg.batch_size, 128)  # both global crops, every step
    for key, value in runner.distiller.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert any(not torch.equal(runner.student.state_dict()[k], v.float()) for k, v in packed["trunk"].items())


def test_dino_centre_is_a_moving_average_and_head_is_weight_normalised():
    center = torch.ones(1, 3)
    out = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    update_center(center, out, momentum=0.9)
    torch.testing.assert_close(center, torch.tensor([[1.1, 1.2, 1.3]]))
    head = DINOHead(8, 5, hidden_dim=16, bottleneck_dim=4)
    assert not head.last_layer.weight_g.requires_grad
    head.last_layer.weight_v.data.mul_(7.0)  # weight normalisation: the scale of v does not matter
    x = torch.randn(2, 8)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), bottleneck @ F.normalize(head.last_layer.weight_v, dim=1).t())
    assert {"mlp.0.weight", "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"} <= set(head.state_dict())


# -- training ---------------------------------------------------------------------------------------

def test_simsiam_training_writes_a_loadable_tiny_simsiam(ten_images, tmp_path):
    out = tmp_path / "simsiam.pt"
    # the trunk is 32 wide and so is the projector: the paper's CAM path predictor(GAP(A)) is defined
    summary = train(cnn_config(ten_images, out, "simsiam", head_dims=(32, 32), predictor_dims=[4, 32]),
                    show_progress=False)
    assert summary["train_images"] == 8 and np.isfinite(summary["final_loss"])
    assert "tiny-simsiam" in available_models()
    model = load_model("tiny-simsiam", weights=out)
    assert model.cam_head is model.head[1]  # the predictor, like simsiam-r50
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        pooled = model.trunk(model.normalize(x)).mean(dim=(2, 3))
        torch.testing.assert_close(model(x), model.head[1](model.head[0](pooled)))
    assert isinstance(model.head[0][-1], torch.nn.BatchNorm1d) and not model.head[0][-1].affine


def test_dino_training_writes_the_shipped_vit_format(ten_images, tmp_path):
    out = tmp_path / "dino.pt"
    summary = train(vit_config(ten_images, out, epochs=2), show_progress=False)
    assert np.isfinite(summary["final_loss"]) and summary["epochs_done"] == 2
    packed = torch.load(out, weights_only=True)
    assert packed["format"] == "ssl_widgets.tiny/1" and packed["head"] == {}
    assert packed["arch"] == {"type": "vit", "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
                              "input_size": 32, "normalized": True, "pooling": "cls"}
    assert all(v.dtype == torch.float16 for v in packed["trunk"].values() if v.is_floating_point())
    assert "last_layer.weight_v" in packed["dino_head"]
    vit = build_tiny_vit_backbone(packed["arch"])
    vit.load_state_dict({k: v.float() for k, v in packed["trunk"].items()})
    assert vit.forward_features(torch.rand(2, 3, 32, 32))[:, 0].shape == (2, 16)
    assert packed["meta"]["chosen_epoch"] in (1, 2)


def test_best_checkpoint_is_the_chosen_epochs_weights(ten_images, tmp_path):
    best = tmp_path / "best.pt"
    summary = train(cnn_config(ten_images, best, "barlow-twins", epochs=3), show_progress=False)
    curve = summary["heldout_curve_seed1"]
    assert [e for e, _ in curve] == [1, 2, 3]
    chosen = summary["chosen_epoch"]
    assert summary["heldout_top1_seed1"] == pytest.approx(max(t for _, t in curve))
    assert chosen == next(e for e, t in curve if t == max(t for _, t in curve))  # first epoch of the best
    # the same run stopped after the chosen epoch (same schedule, no evaluation) has the same weights
    plain = tmp_path / "plain.pt"
    cfg = cnn_config(ten_images, plain, "barlow-twins", epochs=3)
    cfg.eval_every = 0
    train(cfg, show_progress=False, max_epochs_this_run=chosen)
    a, b = torch.load(best, weights_only=True), torch.load(plain, weights_only=True)
    for key in a["trunk"]:
        torch.testing.assert_close(a["trunk"][key], b["trunk"][key])
    assert a["meta"]["chosen_epoch"] == chosen


@pytest.mark.parametrize("method", ["simsiam", "dino"])
def test_resume_continues_to_the_same_weights(ten_images, tmp_path, method):
    def config(out):
        return vit_config(ten_images, out, epochs=3) if method == "dino" else \
            cnn_config(ten_images, out, "simsiam", epochs=3)

    straight, resumed = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    train(config(straight), resume=False, show_progress=False)
    train(config(resumed), show_progress=False, max_epochs_this_run=2)
    assert load_training_state(str(resumed) + ".ckpt")["epoch"] == 2
    summary = train(config(resumed), show_progress=False)
    assert len(summary["loss_history"]) == 3
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key in a["trunk"]:
        torch.testing.assert_close(a["trunk"][key], b["trunk"][key])


class _Exploit:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_checkpoint_with_pickled_objects(ten_images, tmp_path):
    out = tmp_path / "model.pt"
    marker = tmp_path / "code_ran"
    torch.save({"model": {}, "epoch": 1, "payload": _Exploit(marker)}, str(out) + ".ckpt")
    with pytest.raises(UnsafeCheckpointError, match="refusing to resume from .*--no-resume"):
        train(cnn_config(ten_images, out, "simclr"), show_progress=False)
    with pytest.raises(UnsafeCheckpointError, match="could run arbitrary code"):
        load_training_state(str(out) + ".ckpt")
    assert not marker.exists()
    # --no-resume starts over and replaces the file with a safe one
    train(cnn_config(ten_images, out, "simclr"), resume=False, show_progress=False)
    assert load_training_state(str(out) + ".ckpt")["epoch"] == 1


def test_config_errors_name_the_problem(ten_images, tmp_path):
    with pytest.raises(ValueError, match="predictor_dims is for method 'simsiam' only"):
        cnn_config(ten_images, tmp_path / "x.pt", "simclr", predictor_dims=[4, 8])
    with pytest.raises(ValueError, match="blur_p must be two probabilities"):
        cnn_config(ten_images, tmp_path / "x.pt", "barlow-twins", blur_p=[0.5])
    with pytest.raises(ValueError, match="image_size 30 is not a multiple of patch_size 8"):
        TrainConfig(method="dino", data=".", out="x.pt", image_size=30)
    with pytest.raises(ValueError, match="init_from and distill_from are for method 'dino' only"):
        cnn_config(ten_images, tmp_path / "x.pt", "simclr", distill_from="tiny-simclr")
    for name, value, least in (("epochs", 0, 1), ("batch_size", 0, 1), ("width", -1, 1), ("eval_every", -1, 0)):
        with pytest.raises(ValueError, match=rf"{name} must be an integer >= {least}, got {value}"):
            TrainConfig(method="simclr", data=".", out="x.pt", **{name: value})
    cnn_file = tmp_path / "cnn.pt"
    torch.save({"format": "ssl_widgets.tiny/1", "trunk": {}, "head": {}}, cnn_file)  # a CNN file has no DINO head
    with pytest.raises(ValueError, match="not a tiny ViT weight file"):
        train(vit_config(ten_images, tmp_path / "y.pt", init_from=str(cnn_file)), show_progress=False)


def test_cli_lists_the_methods_and_trains(ten_images, tmp_path, capsys):
    help_text = build_parser().format_help()
    for method in ("simclr", "barlow-twins", "simsiam", "dino"):
        assert method in help_text
    assert train_main(["--method", "simsiam", "--data", str(ten_images), "--out", str(tmp_path / "s.pt"),
                       "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--width", "4",
                       "--head-dims", "16,8", "--predictor-dims", "4,8", "--device", "cpu", "--no-progress",
                       "--amp", "--channels-last", "--blur-p", "1,0.1", "--solarize-p", "0,0.2"]) == 0
    assert '"method": "simsiam"' in capsys.readouterr().out
    assert load_model("tiny-simsiam", weights=tmp_path / "s.pt").input_size == 32
    args = build_parser().parse_args(["--method", "dino", "--data", "d", "--out", "o.pt", "--init-from", "tiny-dino-vit",
                                      "--distill-from", "tiny-simclr", "--distill-weight", "2", "--global-size", "80"])
    assert (args.init_from, args.distill_from, args.distill_weight, args.global_size) == (
        "tiny-dino-vit", "tiny-simclr", 2.0, 80)


def test_similarity_gap_separates_positives_from_negatives():
    from ssl_widgets.train.retrieval import similarity_gap

    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # view-major: query 0 -> image 0, query 1 -> image 1
    r = similarity_gap(gallery, queries)
    s = 2 ** -0.5
    assert r["positive"] == pytest.approx((s + 1) / 2, abs=1e-4)
    assert r["negative"] == pytest.approx((s + 0) / 2, abs=1e-4)
    assert r["gap"] == pytest.approx(0.5, abs=1e-4)
