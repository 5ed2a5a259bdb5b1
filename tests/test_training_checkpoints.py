"""Training checkpoints load as their training scripts write them; any other pickled global is refused.

DINO's ``main_dino.py`` saves ``{'student', 'teacher', 'optimizer', 'epoch', 'args', 'dino_loss'
(, 'fp16_scaler')}`` with ``args`` an ``argparse.Namespace``; DINOv2's trainer saves ``{'model':
{'student.*', 'teacher.*'}, 'optimizer', 'iteration'}`` with chunked blocks (``blocks.C.I.*``) and
its ``teacher_checkpoint.pth`` ``{'teacher': {'backbone.*', 'dino_head.*', 'ibot_head.*'}}``.
"""
from __future__ import annotations

import argparse
import os
import pathlib

import pytest
import torch
from test_vit_loaders import V2, VITS16, dino_embedding, dino_head_state, images, random_vit
from torch import nn

from ssl_widgets.models import CheckpointError, load_model


def dino_args() -> argparse.Namespace:
    """The kind of namespace main_dino.py's argparse gives (strings, numbers, booleans, lists, None)."""
    return argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, norm_last_layer=True,
                              momentum_teacher=0.996, use_bn_in_head=False, warmup_teacher_temp=0.04,
                              teacher_temp=0.04, use_fp16=True, weight_decay=0.04, lr=0.0005, batch_size_per_gpu=64,
                              epochs=100, optimizer="adamw", global_crops_scale=(0.4, 1.0), local_crops_number=8,
                              data_path="/path/to/imagenet/train/", output_dir=".", seed=0, dist_url="env://",
                              local_rank=0, gpu=0, rank=0, world_size=8, resume=None)


def optimizer_state() -> dict:
    """A real optimizer's state dict after one step (tensors, numbers and lists)."""
    layer = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    layer(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


@pytest.fixture(scope="module")
def vits16():
    return random_vit(11, **VITS16)


def test_dino_training_checkpoint_with_args_namespace_loads(tmp_path, vits16):
    head_sd, head_forward = dino_head_state(384, 13)
    teacher = {"backbone." + k: v for k, v in vits16.state_dict().items()} | {"head." + k: v for k, v in head_sd.items()}
    student = {"module." + k: v for k, v in teacher.items()}  # DDP-wrapped (the same tensors: stored once)
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": student, "teacher": teacher, "optimizer": optimizer_state(), "epoch": 100,
                "args": dino_args(), "dino_loss": {"center": torch.zeros(1, 64)},
                "fp16_scaler": torch.amp.GradScaler("cpu").state_dict()}, path)
    model = load_model("dino-vits16", weights=path)
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), head_forward(dino_embedding(vits16, x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["fvcore-model", "teacher_checkpoint"])
def test_dinov2_training_checkpoints_load_the_teacher_backbone(tmp_path, layout):
    source = random_vit(21, **V2)
    chunked = {}
    for key, value in source.state_dict().items():  # block_chunks=4: blocks.C.I.* with the global index I
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // 3}.{index}." + key.split(".", 2)[2]
        chunked[key] = value
    chunked["mask_token"] = torch.zeros(1, 384)
    heads = {"dino_head.mlp.0.weight": torch.zeros(8, 384), "ibot_head.mlp.0.weight": torch.zeros(8, 384)}
    teacher = {"backbone." + k: v for k, v in chunked.items()} | heads
    if layout == "fvcore-model":
        checkpoint = {"model": {"teacher." + k: v for k, v in teacher.items()}
                      | {"student." + k: v for k, v in teacher.items()},
                      "optimizer": optimizer_state(), "iteration": 12499}
    else:
        checkpoint = {"teacher": teacher}
    path = tmp_path / "model_0012499.rank_0.pth"
    torch.save(checkpoint, path)
    model = load_model("dinov2-vits14", weights=path)
    x = images(28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dino_embedding(source, x), rtol=1e-5, atol=1e-5)


class _Runs:
    """An object whose unpickling would run a shell command."""

    def __reduce__(self):
        return os.system, ("echo ran >&2",)


@pytest.mark.parametrize("payload, named", [(pathlib.PurePosixPath("/data"), "pathlib.PurePosixPath"),
                                            (_Runs(), "system")], ids=["path-in-args", "code"])
def test_a_checkpoint_with_another_global_is_refused_naming_it(tmp_path, vits16, payload, named, capfd):
    args = dino_args()
    args.output_dir = payload
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1, 1, 384)}, "args": args}, path)
    with pytest.raises(CheckpointError, match=rf"refused to load .*{named}.*argparse\.Namespace"):
        load_model("dino-vits16", weights=path)
    assert "ran" not in capfd.readouterr().err  # nothing of the file was run


def test_a_training_checkpoint_without_the_backbone_says_what_it_found(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {"head.mlp.0.weight": torch.zeros(2, 2)}, "epoch": 3, "args": dino_args()}, path)
    with pytest.raises(CheckpointError, match=r"a training checkpoint with keys \['args', 'epoch', 'teacher'\] "
                                              r"whose teacher has no 'backbone.cls_token'"):
        load_model("dino-vits16", weights=path)
