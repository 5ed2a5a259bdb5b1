"""Every layout the zoo knows (its names, from ``available_models()``) loads its example and refuses a
damaged copy with a CheckpointError naming the key. A new zoo entry is covered here without editing
this file: it needs an example in ``ssl_widgets/models/layout_examples.py``, or this test fails.

Damages, on the largest and on the last tensor of the file that the model holds (found by value among the
built model's tensors, so that a file's unused entries, e.g. a training head, are not chosen; the last one
is a final norm or a head's last layer): removed, a sibling key added, one row added to its shape. The
equality of each correct file with a direct forward is checked per layout in tests/test_loaders.py,
tests/test_vit_loaders.py and tests/test_training_checkpoints.py.
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

from ssl_widgets.models import CheckpointError, SSLModel, available_models, zoo
from ssl_widgets.models.layout_examples import example_checkpoint


#: the undamaged parts load into meta tensors: torch warns that this copies nothing
META_NO_OP = ".*to a meta parameter in the current model, which is a no-op"


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


def added_key(leaf: str) -> str:
    """An unexpected sibling of ``leaf``: ``a.b.weight`` -> ``a.b.extra_weight``, ``cls_token`` -> ``cls_token_extra``."""
    return leaf.rsplit(".", 1)[0] + ".extra_weight" if "." in leaf else leaf + "_extra"


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
        node[added_key(leaf)] = torch.zeros(1)
    else:
        value = node[leaf]
        node[leaf] = torch.zeros((value.shape[0] + 1, *value.shape[1:]))
    return copied


def names_a_key(message, file_key, model):
    parts = file_key.split(".")
    suffixes = {".".join(parts[i:]) for i in range(max(len(parts) - 1, 1))}  # never the bare "weight"
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

    held_paths = list(filter(loaded, tensor_paths(checkpoint)))
    # the largest tensor, and the last one of the file (a final norm or a head's last layer: a loader that
    # leaves the final norm at its initial values maps another model, and stays silent on the largest key)
    largest = max(held_paths, key=lambda p: parent(checkpoint, p)[p[-1]].numel())
    paths = [largest] if held_paths[-1] == largest else [largest, held_paths[-1]]
    # a full-size model that refuses a damaged file is built on the meta device (no memory, no random init: the
    # ResNet-50s and ViT-B took seconds per build; the loader compares the same keys and shapes there); the shipped
    # tiny models build on the CPU (cheap, and their build reads values, which meta tensors do not have)
    size = sum(parent(checkpoint, p)[p[-1]].numel() for p in tensor_paths(checkpoint))
    device = torch.device("meta" if size > 10_000_000 else "cpu")  # published: 21 M values and up; tiny: ~5 M
    for path in paths:
        for how in ("removed", "added", "reshaped"):
            broken = damaged(checkpoint, path, how)
            with pytest.raises(CheckpointError) as refused, device, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=META_NO_OP)
                spec.build(broken)
            message = str(refused.value)
            key = added_key(path[-1]) if how == "added" else path[-1]
            assert names_a_key(message, key, model), f"{name}, key {'/'.join(map(str, path))} {how}: {message}"
