"""DINO / DINOv2 / tiny ViT loaders: files in each published layout, built from random tensors.

The reference for every DINO / DINOv2 ViT is ``tests/official_vit.py``: the reference code's own
token preparation (positions resampled as DINO / DINOv2 do) followed by the blocks of a timm
VisionTransformer built here directly on the same weights; DINO heads are computed here by hand from
their weights (``g * v / ||v||`` for a weight-normalised last layer).
"""
import pytest
import torch
import torch.nn.functional as F
from official_vit import DINO, DINOV2_REGISTERS, reference_embedding
from test_loaders import MEAN, STD, torchvision_trunk, trunk_features
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ssl_widgets.models import CheckpointError, load_model, zoo


def random_vit(seed, **arch):
    vit = VisionTransformer(num_classes=0, global_pool="token", dynamic_img_size=True, **arch)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, p in vit.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
                p.add_(1.0)  # LayerNorm gains near 1
    return vit.eval()


VITS16 = {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}
V2 = {"img_size": 518, "patch_size": 14, "embed_dim": 384, "depth": 12, "num_heads": 6, "init_values": 1e-5}


def dino_embedding(vit, x, rule=DINO, **extra):
    """The reference DINO / DINOv2 forward of ``vit``'s weights on pixel images ``x``."""
    return reference_embedding(vit, dict(vit.state_dict(), **extra), (x - MEAN) / STD, **rule)


def images(size, seed=3):
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def dino_head_state(in_dim, seed, weight_norm=True, bn=False, dims=(32, 32, 16), out_dim=64):
    """A DINO head state dict (``mlp`` Linear[/BN]/GELU..., ``last_layer``) and its forward written by hand."""
    g = torch.Generator().manual_seed(seed)
    state, linears = {}, []
    d_in, idx = in_dim, 0
    for i, d_out in enumerate(dims):
        w, b = torch.randn(d_out, d_in, generator=g) * 0.2, torch.randn(d_out, generator=g) * 0.1
        state[f"mlp.{idx}.weight"], state[f"mlp.{idx}.bias"] = w, b
        layer = {"w": w, "b": b}
        idx += 1
        if i < len(dims) - 1:
            if bn:
                stats = {"weight": torch.rand(d_out, generator=g) + 0.5, "bias": torch.randn(d_out, generator=g) * 0.1,
                         "running_mean": torch.randn(d_out, generator=g) * 0.1,
                         "running_var": torch.rand(d_out, generator=g) + 0.5, "num_batches_tracked": torch.tensor(7)}
                state.update({f"mlp.{idx}.{k}": v for k, v in stats.items()})
                layer["bn"] = stats
                idx += 1
            idx += 1  # GELU
        linears.append(layer)
        d_in = d_out
    v = torch.randn(out_dim, dims[-1], generator=g)
    if weight_norm:
        gain = torch.rand(out_dim, 1, generator=g) + 0.5
        state["last_layer.weight_g"], state["last_layer.weight_v"] = gain, v
        weight = gain * v / v.norm(dim=1, keepdim=True)
    else:
        state["last_layer.weight"] = weight = v

    def forward(x):
        for i, layer in enumerate(linears):
            x = x @ layer["w"].T + layer["b"]
            if i < len(linears) - 1:
                if "bn" in layer:
                    s = layer["bn"]
                    x = (x - s["running_mean"]) / torch.sqrt(s["running_var"] + 1e-5) * s["weight"] + s["bias"]
                x = F.gelu(x)
        return F.normalize(x, dim=-1) @ weight.T

    return state, forward


@pytest.fixture(scope="module")
def vits16():
    return random_vit(11, **VITS16)


def test_dino_vits16_backbone_file(tmp_path, vits16):
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vits16.state_dict(), path)
    model = load_model("dino-vits16", weights=path)
    assert (model.pooling, model.patch_size, model.num_prefix_tokens) == ("cls", 16, 1)
    for size in (32, 48):  # position embeddings interpolated from the 14x14 grid
        x = images(size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), dino_embedding(vits16, x), rtol=1e-5, atol=1e-5)
    assert model.features(images(32)).shape == (2, 384, 2, 2)
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        model(images(40))


@pytest.mark.parametrize("weight_norm", [True, False])
def test_dino_vits16_full_checkpoint_explains_teacher_with_head(tmp_path, vits16, weight_norm):
    student = random_vit(12, **VITS16)
    head_sd, head_forward = dino_head_state(384, 13, weight_norm=weight_norm)
    student_head, _ = dino_head_state(384, 14, weight_norm=weight_norm)
    teacher = {"backbone." + k: v for k, v in vits16.state_dict().items()}
    teacher.update({"head." + k: v for k, v in head_sd.items()})
    student_sd = {"module.backbone." + k: v for k, v in student.state_dict().items()}
    student_sd.update({"module.head." + k: v for k, v in student_head.items()})
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save({"student": student_sd, "teacher": teacher, "optimizer": {}, "epoch": 100, "args": None,
                "dino_loss": {"center": torch.zeros(1, 64)}}, path)
    model = load_model("dino-vits16", weights=path)
    x = images(32)
    with torch.no_grad():
        expected = head_forward(dino_embedding(vits16, x))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    assert model(x).shape == (2, 64)


def test_dino_vitb16_backbone_file(tmp_path):
    vitb = random_vit(15, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    path = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(vitb.state_dict(), path)
    model = load_model("dino-vitb16", weights=path)
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dino_embedding(vitb, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="does not match the backbone of 'dino-vits16'.*shape"):
        load_model("dino-vits16", weights=path)


@pytest.mark.parametrize("registers", [False, True])
def test_dinov2_release_layout(tmp_path, registers):
    """The released layout (class token + 37x37 pos_embed, mask_token, register_tokens) is loaded and
    matches DINOv2's forward of the same file (registers after the positions; their models' own rule)."""
    g = torch.Generator().manual_seed(20)
    source = random_vit(21, **V2)  # blocks with ls1.gamma / ls2.gamma, pos_embed 1 + 37*37
    state = dict(source.state_dict())
    state["mask_token"] = torch.randn(1, 384, generator=g)
    if registers:
        state["register_tokens"] = torch.randn(1, 4, 384, generator=g)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384) and "blocks.11.ls1.gamma" in state
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    extra = {"register_tokens": state["register_tokens"]} if registers else {}
    name = "dinov2-vits14-reg" if registers else "dinov2-vits14"
    model = load_model(name, weights=path)
    assert model.num_prefix_tokens == (5 if registers else 1) and model.input_size == 224
    for size in (28, 42, 518):
        x = images(size)[:1]
        with torch.no_grad():
            expected = dino_embedding(source, x, DINOV2_REGISTERS if registers else DINO, **extra)
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert model.features(images(28)).shape == (2, 384, 2, 2)  # register tokens are not patches
    other = "dinov2-vits14" if registers else "dinov2-vits14-reg"
    with pytest.raises(CheckpointError, match="register_tokens.*load it as"):
        load_model(other, weights=path)
    with pytest.raises(CheckpointError, match="does not match the backbone of 'dino-vits16'"):
        load_model("dino-vits16", weights=path)


@pytest.mark.parametrize("weight_norm", [True, False])
def test_dino_r50_full_checkpoint_teacher_and_head(tmp_path, weight_norm):
    trunk, student = torchvision_trunk(31), torchvision_trunk(32)
    head_sd, head_forward = dino_head_state(2048, 33, weight_norm=weight_norm, bn=True)
    teacher = {"module.backbone." + k: v for k, v in trunk.state_dict().items()}
    teacher.update({"module.head." + k: v for k, v in head_sd.items()})
    student_sd = {"module.backbone." + k: v for k, v in student.state_dict().items()}
    student_sd.update({"module.head." + k: v for k, v in head_sd.items()})
    path = tmp_path / "dino_resnet50_pretrain_full_checkpoint.pth"
    torch.save({"student": student_sd, "teacher": teacher, "epoch": 800}, path)
    model = load_model("dino-r50", weights=path)
    x = images(64)
    with torch.no_grad():
        expected = head_forward(trunk_features(trunk, (x - MEAN) / STD).mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_dino_r50_backbone_file_and_wrong_layouts(tmp_path):
    trunk = torchvision_trunk(34)
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(trunk.state_dict(), path)  # torchvision names, fc dropped (an Identity in DINO)
    model = load_model("dino-r50", weights=path)
    x = images(64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trunk_features(trunk, (x - MEAN) / STD).mean(dim=(2, 3)),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="dino-vits16: neither a DINO full checkpoint"):
        load_model("dino-vits16", weights=path)
    barlow = tmp_path / "barlow.pth"
    torch.save({"model": {"module.backbone.conv1.weight": torch.zeros(1)}, "epoch": 1}, barlow)
    with pytest.raises(CheckpointError, match="dino-r50: neither a DINO full checkpoint"):
        load_model("dino-r50", weights=barlow)
    broken = tmp_path / "broken_head.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in trunk.state_dict().items()}
                | {"head.mlp.0.weight": torch.zeros(4, 2048), "head.mlp.0.bias": torch.zeros(4)}}, broken)
    with pytest.raises(CheckpointError, match="no last layer"):
        load_model("dino-r50", weights=broken)
    # DINO's head Linears all have a bias: one without is a damaged file, not a bias-free layer
    torch.save({"teacher": {"backbone." + k: v for k, v in trunk.state_dict().items()}
                | {"head.mlp.0.weight": torch.zeros(4, 2048), "head.last_layer.weight": torch.zeros(8, 4)}}, broken)
    with pytest.raises(CheckpointError, match=r"'head\.mlp\.0\.weight' has no 'head\.mlp\.0\.bias'"):
        load_model("dino-r50", weights=broken)


def test_corrupt_file_and_cached_download_checksum(tmp_path, torch_home, vits16):
    spec = zoo.model_info("dinov2-vits14")
    assert spec.url.startswith("https://dl.fbaipublicfiles.com/dinov2/") and "Apache-2.0" in spec.license
    source = random_vit(41, **V2)
    placed = torch_home / "hub" / "checkpoints" / spec.file_name
    torch.save(dict(source.state_dict(), mask_token=torch.zeros(1, 384)), placed)
    model = load_model("dinov2-vits14")  # from torch.hub's cache, hash pinned on first use
    x = images(28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dino_embedding(source, x), rtol=1e-5, atol=1e-5)
    data = bytearray(placed.read_bytes())
    data[-200] ^= 0xFF
    placed.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch.*dinov2-vits14"):
        load_model("dinov2-vits14")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(bytes(data[:50_000]))
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_model("dino-vits16", weights=cut)


def test_tiny_dino_vit_file_format(tmp_path):
    arch = {"type": "vit", "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "input_size": 112,
            "normalized": True, "pooling": "cls"}
    vit = random_vit(51, img_size=112, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    trunk = {k: v.half() for k, v in vit.state_dict().items()}
    path = tmp_path / "tiny-dino-vit.pt"
    torch.save({"format": "ssl_widgets.tiny/1", "arch": arch, "trunk": trunk, "head": {},
                "meta": {"recipe": "dino"}}, path)
    model = load_model("tiny-dino-vit", weights=path)
    assert model.input_size == 112 and model.patch_size == 8 and model.meta == {"recipe": "dino"}
    vit.load_state_dict({k: v.float() for k, v in trunk.items()})  # the fp16-rounded weights
    x = images(112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit.forward_features((x - MEAN) / STD)[:, 0], rtol=1e-4, atol=1e-4)
    assert "tiny-dino-vit" in zoo.available_models()
    torch.save({"format": "ssl_widgets.tiny/1", "arch": arch, "trunk": {}, "head": {}}, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_model("tiny-dino-vit", weights=path)


def test_dino_head_module_layouts():
    head_sd, head_forward = dino_head_state(8, 61, dims=(4,), out_dim=5)  # nlayers=1 is a single Linear
    single = {k.replace("mlp.0.", "mlp."): v for k, v in head_sd.items()}
    from ssl_widgets.models.dino import dino_head_from_state

    head = dino_head_from_state(single)
    assert isinstance(head.mlp, nn.Linear)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(head(x), head_forward(x))
    with pytest.raises(CheckpointError, match="expected 'mlp"):
        dino_head_from_state({"last_layer.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("method", ["cls-attention", "feature-pca"])
def test_cli_explains_a_dino_vit(tmp_path, vits16, method, capsys):
    from ssl_widgets.cli import main

    weights = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vits16.state_dict(), weights)
    out = tmp_path / f"{method}.png"
    code = main(["explain", "chelsea", "--model", "dino-vits16", "--weights", str(weights), "--method", method,
                 "--out", str(out)])
    assert code == 0 and out.stat().st_size > 10_000
    assert f"{method} on dino-vits16" in capsys.readouterr().out
    assert main(["explain", "chelsea", "--model", "tiny-simclr", "--method", "cls-attention",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "does not apply to model 'tiny-simclr'" in err and "Vision Transformer" in err
