"""Every layout the zoo knows (its names, from ``available_models()``) loads its example and refuses a
damaged copy with a CheckpointError naming the key. A new zoo entry is covered here without editing
this file: it needs an example in ``ssl_widgets/models/layout_examples.py``, or this test fails.

Damages, on the largest tensor of the file that the model holds (found by value among the built model's
tensors, so that a file's unused entries, e.g. a training head, are not chosen): removed, a sibling key
added, one row added to its shape. The equality of each correct file with a direct forward is checked per
layout in tests/test_loaders.py, tests/test_vit_loaders.py and tests/test_training_checkpoints.py.
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

from ssl_widgets.models import CheckpointError, SSLModel, available_models, zoo
from ssl_widgets.models.layout_examples import example_checkpoint


def tensor_paths(obj, prefix=()):
    if isinstance(obj, torch.Tensor):
        return [prefix]
    if isinstance(obj, dict):
        return [p for key, value in obj.items() for p in tensor_paths(value, prefix + (key,))]
    return []


def parent(obj, path):
    for key in path[:-1]:
        obj = obj[key]
    return obj


def damaged(checkpoint, path, how):
    copied = copy.copy(checkpoint)  # shallow copies along the path; tensors are shared, never written
    node = copied
    for key in path[:-1]:
        node[key] = copy.copy(node[key])
        node = node[key]
    leaf = path[-1]
    if how == "removed":
        del node[leaf]
    elif how == "added":
        node[leaf.rsplit(".", 1)[0] + ".extra_weight" if "." in leaf else leaf + "_extra"] = torch.zeros(1)
    else:
        value = node[leaf]
        node[leaf] = torch.zeros((value.shape[0] + 1, *value.shape[1:]))
    return copied


def names_a_key(message, file_key, model):
    suffixes = {".".join(file_key.split(".")[i:]) for i in range(len(file_key.split(".")) - 1)}
    model_keys = {k for part in (model.trunk, model.head) for k in part.state_dict()}
    quoted = set(re.findall(r"'([^']+)'", message)) | set(re.findall(r"([\w.]+): checkpoint", message))
    return any(s in message for s in suffixes) or bool(quoted & model_keys)


@pytest.mark.parametrize("name", available_models())
def test_every_layout_loads_and_refuses_a_damaged_copy(name):
    spec = zoo.model_info(name)
    checkpoint = example_checkpoint(name)
    model = spec.build(checkpoint)
    assert isinstance(model, SSLModel)
    held: dict[tuple, list[torch.Tensor]] = {}
    for value in model.state_dict().values():
        held.setdefault(tuple(value.shape), []).append(value.float())

    def loaded(p):
        value = parent(checkpoint, p)[p[-1]]
        return value.numel() > 1 and any(torch.equal(value.float(), v) for v in held.get(tuple(value.shape), []))

    path = max(filter(loaded, tensor_paths(checkpoint)), key=lambda p: parent(checkpoint, p)[p[-1]].numel())
    # a full-size model that refuses a damaged file is built on the meta device (no memory, no random init: the
    # ResNet-50s and ViT-B took seconds per build; the loader compares the same keys and shapes there); the shipped
    # tiny models build on the CPU (cheap, and their build reads values, which meta tensors do not have)
    size = sum(parent(checkpoint, p)[p[-1]].numel() for p in tensor_paths(checkpoint))
    device = torch.device("meta" if size > 10_000_000 else "cpu")  # published: 21 M values and up; tiny: ~5 M
    for how in ("removed", "added", "reshaped"):
        broken = damaged(checkpoint, path, how)
        with pytest.raises(CheckpointError) as refused, device, warnings.catch_warnings():
            # the undamaged parts load into meta tensors: torch warns that this copies nothing
            warnings.filterwarnings("ignore", message=".*to a meta parameter in the current model, which is a no-op")
            spec.build(broken)
        message = str(refused.value)
        key = path[-1].rsplit(".", 1)[0] + ".extra_weight" if how == "added" else path[-1]
        assert names_a_key(message, key, model), f"{name}, key {'/'.join(map(str, path))} {how}: {message}"
