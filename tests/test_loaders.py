"""Loaders of published weights: checkpoint files in each real layout, built from random tensors.

The layouts are written here from environment.md's description, independently of the
package's converters, and each loaded model is compared with a directly built network.
"""
import dataclasses
import functools
import re
import types

import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.resnet import Bottleneck, ResNet

from ssl_widgets.models import CheckpointError, builders, download, load_model, registry, zoo

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def randomize(module, seed):
    """Random weights and BN statistics, so that a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
                elif "weight" in name and tensor.dim() == 1:
                    tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5 + 0.75)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
    return module.eval()


def wide_resnet50(width):
    """SimCLR v2's ResNet-50 (width) x: every channel count of ResNet-50 times ``width``, stem included.

    Built from torchvision's own ResNet and Bottleneck (not the package's trunk). torchvision's
    ``width_per_group`` (wide_resnet50_2) widens only the 3x3 convolutions, so the stages are rebuilt here
    with ``width`` times the planes (4096 output channels at 2x, as SimCLR v2's r50_2x).
    """
    net = ResNet(Bottleneck, [3, 4, 6, 3])
    if width != 1:
        net.inplanes = 64 * width
        net.conv1 = nn.Conv2d(3, 64 * width, 7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(64 * width)
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            setattr(net, f"layer{index + 1}", net._make_layer(Bottleneck, planes * width, blocks,
                                                               stride=1 if index == 0 else 2))
    return net


def torchvision_trunk(seed, width=1):
    net = randomize(resnet50() if width == 1 else wide_resnet50(width), seed)
    net.fc = nn.Identity()
    net.avgpool = nn.Identity()
    return net


def trunk_features(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def head_mlp(dims, last_bn=False, last_bias=False, last_affine=True):
    layers = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=last_bias if last else False))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_affine))
    return nn.Sequential(*layers)


def simclr_key(key):
    """torchvision name -> the converted SimCLR v2 layout of environment.md."""
    stem = {"conv1.weight": "net.0.0.weight"}
    if key in stem:
        return stem[key]
    if key.startswith("bn1."):
        return "net.0.1.0." + key[4:]
    m = re.match(r"layer(\d)\.(\d+)\.(.*)", key)
    stage, block, rest = m.groups()
    table = {"conv1.": "net.0.", "conv2.": "net.2.", "conv3.": "net.4.", "bn1.": "net.1.0.", "bn2.": "net.3.0.",
             "bn3.": "net.5.0.", "downsample.0.": "projection.shortcut.", "downsample.1.": "projection.bn.0."}
    for old, new in table.items():
        if rest.startswith(old):
            return f"net.{stage}.blocks.{block}.{new}{rest[len(old):]}"
    raise AssertionError(key)


@pytest.fixture(scope="module")
def x224():
    return torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("width", [1, 2])
def test_simclr_v2_checkpoint(tmp_path, x224, width):
    trunk = torchvision_trunk(1, width)
    dim = 2048 * width
    head = randomize(head_mlp([dim, dim, dim, 128], last_bn=True), 2)
    resnet = {simclr_key(k): v for k, v in trunk.state_dict().items()}
    resnet["fc.weight"], resnet["fc.bias"] = torch.randn(1000, dim), torch.randn(1000)
    path = tmp_path / f"r50_{width}x_sk0_ema.pth"
    torch.save({"resnet": resnet, "head": {"layers." + k: v for k, v in head.state_dict().items()}}, path)

    model = load_model(f"simclr-v2-r50-{width}x", weights=path)
    assert not model.normalized  # SimCLR v2 takes raw [0, 1] pixels
    with torch.no_grad():
        expected = head(trunk_features(trunk, x224).mean(dim=(2, 3)))
        torch.testing.assert_close(model(x224), expected, rtol=1e-4, atol=1e-4)
    if width == 2:
        with pytest.raises(CheckpointError, match="does not match the trunk of 'simclr-v2-r50-1x'.*shape"):
            load_model("simclr-v2-r50-1x", weights=path)


def test_simclr_v2_without_file_says_where_to_put_it(torch_home):
    with pytest.raises(FileNotFoundError, match=r"r50_1x_sk0.*weights=PATH.*r50_1x_sk0_ema\.pth"):
        load_model("simclr-v2-r50-1x")


BARLOW_WIDTH = 64  # the published projector is 8192 wide (a ~600 MB file); tests use this width


def barlow_state(trunk_sd, projector_sd, width):
    """The official full checkpoint's ``model`` dict: backbone, projector and the loss-only affine-free BN."""
    model_sd = {"module.backbone." + k: v for k, v in trunk_sd.items()}
    model_sd.update({"module.projector." + k: v for k, v in projector_sd.items()})
    bn = nn.BatchNorm1d(width, affine=False, device=next(iter(projector_sd.values())).device)
    model_sd.update({"module.bn." + k: v for k, v in bn.state_dict().items()})
    return model_sd


@pytest.fixture
def small_barlow(monkeypatch):
    """The zoo's Barlow Twins entry with a BARLOW_WIDTH-wide projector (same code, same key layout)."""
    spec = zoo.model_info("barlow-twins-r50")
    build = functools.partial(builders.build_barlow_twins, projector_width=BARLOW_WIDTH)
    monkeypatch.setitem(registry._REGISTRY, spec.name, dataclasses.replace(spec, build=build))
    return spec


@pytest.fixture(scope="module")
def barlow_file(tmp_path_factory):
    trunk = torchvision_trunk(3)
    projector = randomize(head_mlp([2048, BARLOW_WIDTH, BARLOW_WIDTH, BARLOW_WIDTH]), 4)
    model_sd = barlow_state(trunk.state_dict(), projector.state_dict(), BARLOW_WIDTH)
    path = tmp_path_factory.mktemp("barlow") / "checkpoint.pth"
    torch.save({"epoch": 1000, "model": model_sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path, trunk, projector


def test_barlow_twins_published_8192_layout_is_accepted(monkeypatch):
    """The real 8192-8192-8192 layout, on the meta device (no memory): every key name and shape must load."""
    # the wrapper is skipped (it reads its mean/std values); the strict key and shape check is the zoo's own
    monkeypatch.setattr(builders, "SSLModel", lambda trunk, head, **kwargs: types.SimpleNamespace(trunk=trunk, head=head))
    with torch.device("meta"):
        trunk = torchvision_trunk_meta()
        projector = head_mlp([2048, 8192, 8192, 8192])
        checkpoint = {"epoch": 1000, "model": barlow_state(trunk.state_dict(), projector.state_dict(), 8192)}
        model = builders.build_barlow_twins(checkpoint)  # strict: any missing, extra or misshaped key raises
    head = dict(model.head.state_dict())
    assert {k: tuple(v.shape) for k, v in head.items()} == {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    assert tuple(head["6.weight"].shape) == (8192, 8192)
    checkpoint["model"]["module.projector.6.weight"] = torch.empty(8192, 4096, device="meta")
    with pytest.raises(CheckpointError, match="projector of 'barlow-twins-r50'.*shape"), torch.device("meta"):
        builders.build_barlow_twins(checkpoint)


def torchvision_trunk_meta():
    net = resnet50()
    net.fc, net.avgpool = nn.Identity(), nn.Identity()
    return net


def test_barlow_twins_full_checkpoint(barlow_file, x224, small_barlow):
    path, trunk, projector = barlow_file
    model = load_model("barlow-twins-r50", weights=path)
    assert model.normalized
    with torch.no_grad():
        expected = projector(trunk_features(trunk, (x224 - MEAN) / STD).mean(dim=(2, 3)))
        torch.testing.assert_close(model(x224), expected, rtol=1e-4, atol=1e-4)
    assert model(x224).shape == (2, BARLOW_WIDTH)


def test_barlow_download_path_via_torch_home_and_pinned_checksum(barlow_file, torch_home, x224, small_barlow):
    path, trunk, projector = barlow_file
    spec = zoo.model_info("barlow-twins-r50")
    placed = torch_home / "hub" / "checkpoints" / spec.file_name
    placed.write_bytes(path.read_bytes())
    model = load_model("barlow-twins-r50")
    with torch.no_grad():
        expected = projector(trunk_features(trunk, (x224 - MEAN) / STD).mean(dim=(2, 3)))
        torch.testing.assert_close(model(x224), expected, rtol=1e-4, atol=1e-4)
    pin = placed.with_name(placed.name + ".sha256")
    assert pin.exists() and len(pin.read_text().strip()) == 64
    data = bytearray(placed.read_bytes())
    data[-100] ^= 0xFF  # a changed file no longer matches the pinned hash
    placed.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model("barlow-twins-r50")


def test_simsiam_checkpoint(tmp_path, x224):
    encoder = torchvision_trunk(6)
    projector = randomize(head_mlp([2048, 2048, 2048, 2048], last_bn=True, last_bias=True, last_affine=False), 7)
    predictor = randomize(head_mlp([2048, 512, 2048], last_bias=True), 8)
    state = {"module.encoder." + k: v for k, v in encoder.state_dict().items()}
    state.update({"module.encoder.fc." + k: v for k, v in projector.state_dict().items()})
    state.update({"module.predictor." + k: v for k, v in predictor.state_dict().items()})
    path = tmp_path / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": {}}, path)
    model = load_model("simsiam-r50", weights=path)
    with torch.no_grad():
        pooled = trunk_features(encoder, (x224 - MEAN) / STD).mean(dim=(2, 3))
        expected = predictor(projector(pooled))  # similarity on the predictor output, as the paper's code
        torch.testing.assert_close(model(x224), expected, rtol=1e-4, atol=1e-4)
        # the CAM path is the predictor alone, applied to the pooled features (the projector is skipped)
        assert model.cam_head is model.head[1]
        torch.testing.assert_close(model.cam_head(pooled), predictor(pooled), rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="Barlow Twins checkpoint: expected a dict with key 'model'"):
        load_model("barlow-twins-r50", weights=path)  # wrong layout for that model


def test_supervised_resnet_through_torch_home(torch_home, x224, monkeypatch):
    net = randomize(resnet50(), 9)
    spec = zoo.model_info("resnet50-supervised")
    placed = torch_home / "hub" / "checkpoints" / spec.file_name
    torch.save(net.state_dict(), placed)
    # the real file's sha256 starts with 0676ba61; this random one does not
    with pytest.raises(CheckpointError, match="checksum mismatch.*resnet50-supervised"):
        load_model("resnet50-supervised")
    real_hash = download._sha256(placed)
    monkeypatch.setitem(registry._REGISTRY, spec.name, dataclasses.replace(spec, sha256=real_hash[:8]))
    model = load_model("resnet50-supervised")
    with torch.no_grad():
        net.fc = nn.Identity()
        torch.testing.assert_close(model(x224), net((x224 - MEAN) / STD), rtol=1e-4, atol=1e-4)


def test_failed_download_names_url_and_path(torch_home, monkeypatch):
    def refuse(url, dst, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(download, "_download", refuse)
    spec = zoo.model_info("simsiam-r50")
    expected_path = torch_home / "hub" / "checkpoints" / spec.file_name
    with pytest.raises(FileNotFoundError) as info:
        load_model("simsiam-r50")
    assert spec.url in str(info.value) and str(expected_path) in str(info.value)


def test_truncated_file_is_reported(tmp_path, barlow_file, small_barlow):
    path, _, _ = barlow_file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_model("barlow-twins-r50", weights=cut)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_model("tiny-simclr", weights=junk)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_model("tiny-simclr", weights=tmp_path / "nowhere.pth")


def test_tiny_model_rejects_foreign_layout(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a 'tiny-simclr' weight file"):
        load_model("tiny-simclr", weights=path)


def test_tiny_simsiam_cam_path_is_defined():
    from ssl_widgets.attr import InteractionCAM

    model = load_model("tiny-simsiam")
    assert isinstance(model.head, torch.nn.Sequential) and len(model.head) == 2
    # its predictor takes the 512-d projector output, not the 256-d trunk feature: predictor(GAP(A)) (the paper's
    # SimSiam CAM path, defined for simsiam-r50 where both are 2048-d) does not exist, so the full head is used
    assert model.head[1][0].in_features != model.trunk.out_channels and model.cam_head is None
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    m1, m2 = InteractionCAM(model).attribute((x, x.flip(-1)), pooling="max")
    assert m1.shape == (1, 7, 7) and bool(torch.isfinite(m1).all())
    assert load_model("tiny-simclr").cam_head is None
