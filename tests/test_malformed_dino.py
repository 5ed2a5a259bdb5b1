"""Malformed DINO / DINOv2 files: every one is a CheckpointError naming the key, never a model that
loads and fails at its first forward, nor an IndexError/KeyError/AttributeError from deep inside."""
from __future__ import annotations

import pytest
import torch
from test_vit_loaders import V2, VITS16, dino_head_state, images, random_vit

from ssl_widgets.models import CheckpointError, load_model


@pytest.fixture(scope="module")
def vits16_state():
    return random_vit(11, **VITS16).state_dict()


@pytest.fixture(scope="module")
def v2_state():
    return random_vit(21, **V2).state_dict()


def full_checkpoint(backbone, head):
    return {"teacher": {"backbone." + k: v for k, v in backbone.items()} | {"head." + k: v for k, v in head.items()},
            "epoch": 1}


def head(**overrides):
    state, _ = dino_head_state(384, 5)
    state.update(overrides)
    return {k: v for k, v in state.items() if v is not ...}


MALFORMED = {
    "last layer wider than the mlp output": (lambda b: full_checkpoint(b, head(**{
        "last_layer.weight_v": torch.ones(64, 20)})), r"'last_layer.weight_g' and 'last_layer.weight_v'|last_layer"),
    "mlp input is not the backbone width": (lambda b: full_checkpoint(b, head(**{
        "mlp.0.weight": torch.ones(32, 100)})), r"'head.mlp' takes 100-d input, but the backbone gives 384-d"),
    "mlp layers that do not chain": (lambda b: full_checkpoint(b, head(**{
        "mlp.2.weight": torch.ones(32, 7)})), r"'head.mlp' layers do not chain"),
    "mlp key without an index": (lambda b: full_checkpoint(b, head(**{
        "mlp.x.weight": torch.ones(2, 2)})), r"head.mlp.x.weight"),
    "1-d last layer": (lambda b: full_checkpoint(b, head(**{
        "last_layer.weight_g": ..., "last_layer.weight_v": ..., "last_layer.weight": torch.ones(64)})),
        r"'head.last_layer.weight' should be a 2-d tensor"),
    "gain and weight of other sizes": (lambda b: full_checkpoint(b, head(**{
        "last_layer.weight_g": torch.ones(3, 1)})), r"'last_layer.weight_g' and 'last_layer.weight_v'"),
    "a backbone entry that is not a tensor": (lambda b: dict(b, **{"norm.weight": None}),
                                              r"'norm.weight' \(NoneType\)"),
    "teacher that is not a state dict": (lambda b: {"teacher": [1, 2], "epoch": 1}, r"'teacher' is a list"),
    "a key that is not a string": (lambda b: dict(b, **{"x": torch.ones(1)}) | {3: torch.ones(1)}, r"3 \(Tensor\)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_dino_vit_files_name_the_key(tmp_path, vits16_state, case):
    make, message = MALFORMED[case]
    path = tmp_path / "dino.pth"
    torch.save(make(dict(vits16_state)), path)
    with pytest.raises(CheckpointError, match=message):
        load_model("dino-vits16", weights=path)


def test_dinov2_registers_without_position_embeddings(tmp_path, v2_state):
    state = {k: v for k, v in v2_state.items() if k != "pos_embed"} | {"register_tokens": torch.zeros(1, 4, 384)}
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"'pos_embed' \(1, 1 \+ N, C\), found .* and NoneType"):
        load_model("dinov2-vits14-reg", weights=path)


KEYS = ["norm.weight", "norm.bias", "cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.mlp.fc2.bias",
        "blocks.0.attn.qkv.weight"]


@pytest.mark.parametrize("name", ["dino-vits16", "dinov2-vits14", "dinov2-vits14-reg"])
def test_a_missing_extra_or_reshaped_backbone_key_is_refused_by_name(tmp_path, vits16_state, v2_state, name):
    """A DINO file without its final norm (or any other key) must not load with that layer left at its
    initial values: the loaders are strict, and say which key."""
    state = dict(vits16_state if name == "dino-vits16" else v2_state)
    if name.endswith("-reg"):
        state["register_tokens"] = torch.zeros(1, 4, 384)
    path = tmp_path / "file.pth"
    for key in KEYS + (["blocks.11.ls2.gamma"] if name.startswith("dinov2") else []):
        torch.save({k: v for k, v in state.items() if k != key}, path)
        shown = "cls_token" if name.endswith("-reg") and key in ("pos_embed",) else key
        with pytest.raises(CheckpointError, match=rf"missing .*{shown}|'{shown}'"):
            load_model(name, weights=path)
    torch.save(dict(state, **{"blocks.3.extra.weight": torch.zeros(2)}), path)
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys .*blocks\.3\.extra\.weight"):
        load_model(name, weights=path)
    torch.save(dict(state, **{"norm.weight": torch.ones(383)}), path)
    with pytest.raises(CheckpointError, match=r"shape mismatches .*norm\.weight: checkpoint \(383,\) vs model \(384,\)"):
        load_model(name, weights=path)
    torch.save(state, path)
    assert torch.isfinite(load_model(name, weights=path)(images(28 if "v2" in name else 32))).all()


def test_the_trained_head_reloads_from_its_checkpoint_keys():
    """``tiny_vit.DINOHead`` (DINO's trainable head) written in DINO's layout reloads as the checkpoint head
    with the same outputs and the checkpoint's key names (the weight norm folded into ``last_layer.weight``)."""
    from ssl_widgets.models.dino import CheckpointDINOHead, dino_head_from_state
    from ssl_widgets.models.tiny_vit import DINOHead, dino_head_state_dict

    torch.manual_seed(0)
    trained = DINOHead(8, 5, hidden_dim=16, bottleneck_dim=4).eval()
    state = dino_head_state_dict(trained, half=False)
    rebuilt = dino_head_from_state(state, in_dim=8)
    assert isinstance(rebuilt, CheckpointDINOHead)
    folded = {k for k in state if not k.startswith("last_layer.")} | {"last_layer.weight"}
    assert set(rebuilt.state_dict()) == folded
    x = torch.randn(3, 8)
    torch.testing.assert_close(rebuilt(x), trained(x), atol=1e-5, rtol=1e-5)  # float32 reassociation only
