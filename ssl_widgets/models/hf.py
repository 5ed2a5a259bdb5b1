"""Hugging Face ``transformers`` vision models as :class:`~ssl_widgets.models.SSLModel` (what
:meth:`SSLModel.from_transformers <ssl_widgets.models.SSLModel.from_transformers>` wraps).

``Dinov2Model``, ``Dinov2WithRegistersModel`` and ``ViTModel`` (DINO's weights, e.g.
``facebook/dino-vits16``) become timm-layout Vision Transformers on the same weights
(:class:`~ssl_widgets.models.position_rules.ReferenceViT`), so that every pair method and every ViT
view (class-token attention, rollout, feature PCA, the token-grid CAMs) runs on them exactly as on
the zoo's DINO models. The embedding is what the model cards use: the class token after the final
layer norm (``pooler_output`` of the DINOv2 models, ``last_hidden_state[:, 0]`` of ``ViTModel``).

The forward equals the Hugging Face model's own (its layer-norm epsilon, and its position-embedding
rule for other input sizes: bicubic to the grid size, with antialias for the register models).
``position_rule=DINO_RULE`` instead gives facebookresearch/dino(v2)'s rule, so that a DINOv2 model
from the hub of Hugging Face and the same weights from torch.hub give the same embedding at every size.

``transformers`` is an optional dependency: ``pip install "ssl-widgets[hf]"``. Nothing here downloads
unless asked: :func:`load_pretrained` takes a hub name (downloaded into Hugging Face's cache by
``transformers``, or read from it offline) or a local folder.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .converters import CheckpointError, dinov2_to_timm_layout
from .position_rules import HF_RULE, REGISTERS_RULE, PositionRule, ReferenceViT
from .normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SUPPORTED", "load_pretrained", "refuse_incomplete_weights", "transformers_parts"]

#: transformers classes understood here -> the attribute of a task model (``*ForImageClassification``) holding one.
SUPPORTED = {"Dinov2Model": "dinov2", "Dinov2WithRegistersModel": "dinov2_with_registers", "ViTModel": "vit"}

#: weights a file may lack without changing the embedding: ViTModel's tanh pooler, the masked-modelling token
_NOT_IN_THE_EMBEDDING = ("pooler.", "embeddings.mask_token")
#: the base model's own modules (an unexpected key elsewhere, e.g. a task head's ``classifier.*``, is not loaded)
_BASE_MODEL_PARTS = ("embeddings.", "encoder.", "layers.", "layernorm.")

_INSTALL = 'Hugging Face models need transformers: pip install "ssl-widgets[hf]" (or pip install transformers)'


def _base_model(model: nn.Module) -> nn.Module:
    name = type(model).__name__
    if name in SUPPORTED:
        return model
    for attribute in SUPPORTED.values():  # e.g. Dinov2ForImageClassification.dinov2
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module) and type(inner).__name__ in SUPPORTED:
            return inner
    raise TypeError(f"{name} is not supported: from_transformers takes {', '.join(SUPPORTED)} (or a task model "
                    f"built on one); other models can be wrapped with SSLModel(trunk, head, ...) directly")


#: timm's name within a block -> transformers' names for it (4.x first, then 5.x); DINOv2 / ViTModel differ.
_BLOCK_NAMES: dict[str, tuple[str, ...]] = {
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "ls1.gamma": ("layer_scale1.lambda1",),
    "ls2.gamma": ("layer_scale2.lambda1",),
}
_DINOV2_NAMES = {"norm1": ("norm1",), "norm2": ("norm2",), "mlp.fc1": ("mlp.fc1",), "mlp.fc2": ("mlp.fc2",)}
_VIT_NAMES = {"norm1": ("layernorm_before",), "norm2": ("layernorm_after",), "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
              "mlp.fc2": ("output.dense", "mlp.fc2")}
_QKV_NAMES = {"q": ("attention.attention.query", "attention.q_proj"), "k": ("attention.attention.key", "attention.k_proj"),
              "v": ("attention.attention.value", "attention.v_proj")}
_LAYER_PREFIXES = ("encoder.layer.{}.", "layers.{}.", "encoder.layers.{}.")


def _take(state: dict[str, torch.Tensor], prefix: str, names: tuple[str, ...], suffix: str) -> torch.Tensor:
    """Pop ``prefix + name + suffix`` for the first of ``names`` present; a ``CheckpointError`` naming them if none."""
    for name in names:
        key = f"{prefix}{name}{suffix}"
        if key in state:
            return state.pop(key)
    raise CheckpointError(f"transformers model: none of {[f'{prefix}{n}{suffix}' for n in names]} in its weights")


def convert_state(state: Mapping[str, torch.Tensor], config: Any, dinov2: bool,
                  registers: int) -> dict[str, torch.Tensor]:
    """A transformers ViT / DINOv2 state dict in timm's ``VisionTransformer`` layout.

    Understands the module names of transformers 4.x (``encoder.layer.N.attention.attention.query``)
    and 5.x (``encoder.layer.N.attention.q_proj``, ``layers.N`` in ``ViTModel``). Query, key and value
    are stacked into ``qkv``; with register tokens the class token's position is folded into the class
    token (timm's ``no_embed_class`` layout, as the zoo's DINOv2 loader does).

    Raises:
        CheckpointError: a key is missing or left over (named).
    """
    state = dict(state)
    out = {"cls_token": _take(state, "embeddings.", ("cls_token",), ""),
           "pos_embed": _take(state, "embeddings.", ("position_embeddings",), "")}
    for part in ("weight", "bias"):
        out[f"patch_embed.proj.{part}"] = _take(state, "embeddings.", ("patch_embeddings.projection",), f".{part}")
        out[f"norm.{part}"] = _take(state, "", ("layernorm",), f".{part}")
    state.pop("embeddings.mask_token", None)
    if registers:
        out["register_tokens"] = _take(state, "embeddings.", ("register_tokens",), "")
    names = {**_BLOCK_NAMES, **(_DINOV2_NAMES if dinov2 else _VIT_NAMES)}
    if not dinov2:
        del names["ls1.gamma"], names["ls2.gamma"]
    for i in range(config.num_hidden_layers):
        prefixes = [p.format(i) for p in _LAYER_PREFIXES if any(k.startswith(p.format(i)) for k in state)]
        if not prefixes:
            raise CheckpointError(f"transformers model: no weights of layer {i} (looked for {_LAYER_PREFIXES})")
        layer = prefixes[0]
        for part in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([_take(state, layer, _QKV_NAMES[p], f".{part}")
                                                             for p in ("q", "k", "v")])
        for ours, theirs in names.items():
            for suffix in ("",) if ours.endswith("gamma") else (".weight", ".bias"):
                out[f"blocks.{i}.{ours}{suffix}"] = _take(state, layer, theirs, suffix)
    leftover = [k for k in state if not k.startswith("pooler.")]  # ViTModel's tanh pooler is not the embedding
    if leftover:
        raise CheckpointError(f"transformers model: unexpected weights {leftover[:4]} (a variant this converter "
                              f"does not know, e.g. a SwiGLU feed-forward)")
    return dinov2_to_timm_layout(out)  # with registers: the zoo's DINOv2 layout, class position folded in


def transformers_parts(model: nn.Module, *, position_rule: PositionRule | None = None,
                       mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                       input_size: int = 224, name: str | None = None) -> dict[str, Any]:
    """The :class:`~ssl_widgets.models.SSLModel` arguments (and ``meta``) that wrap a transformers
    ``Dinov2Model``, ``Dinov2WithRegistersModel`` or ``ViTModel``; the arguments are
    :func:`ssl_widgets.models.from_transformers`'s."""
    base = _base_model(model)
    config, kind = base.config, type(base).__name__
    dinov2 = kind.startswith("Dinov2")
    registers = int(getattr(config, "num_register_tokens", 0) or 0) if kind == "Dinov2WithRegistersModel" else 0
    if getattr(config, "use_swiglu_ffn", False):
        raise ValueError(f"{kind} with a SwiGLU feed-forward (the giant models) is not supported")
    if getattr(config, "hidden_act", "gelu") != "gelu":
        raise ValueError(f"{kind} with hidden_act={config.hidden_act!r} is not supported (GELU only)")
    hidden = int(config.hidden_size)
    mlp_ratio = float(config.mlp_ratio) if dinov2 else int(config.intermediate_size) / hidden
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    image = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    rule = position_rule or (REGISTERS_RULE if registers else HF_RULE)
    vit = ReferenceViT(
        position_rule=rule, img_size=int(image), patch_size=int(patch), embed_dim=hidden,
        depth=int(config.num_hidden_layers), num_heads=int(config.num_attention_heads), mlp_ratio=mlp_ratio,
        qkv_bias=bool(getattr(config, "qkv_bias", True)), num_classes=0, global_pool="token",
        init_values=float(config.layerscale_value) if dinov2 else None, reg_tokens=registers,
        no_embed_class=bool(registers), norm_layer=partial(nn.LayerNorm, eps=float(config.layer_norm_eps)),
    )
    state = convert_state(base.state_dict(), config, dinov2, registers)
    vit.load_state_dict(state, strict=True)
    label = name or getattr(config, "_name_or_path", "") or kind
    return {"trunk": vit.eval(), "head": None, "mean": mean, "std": std, "name": label, "input_size": input_size,
            "pooling": "cls", "num_prefix_tokens": vit.num_prefix_tokens, "patch_size": int(patch),
            "trunk_method": "forward_features",
            "meta": {"source": f"transformers {kind}", "position embeddings": rule.name}}


def load_pretrained(name_or_path: str | os.PathLike) -> nn.Module:
    """Load a transformers model by hub name (``facebook/dinov2-small``) or local folder, in eval mode
    (``load_model("hf:NAME")`` wraps it with :func:`ssl_widgets.models.from_transformers`).

    Args:
        name_or_path: a Hugging Face hub name or a folder written by ``save_pretrained``.

    Raises:
        ModuleNotFoundError: transformers is not installed (the message says how to install it).
        FileNotFoundError: the weights are neither in Hugging Face's cache nor downloadable; the
            message says what to download and where to put it.
        CheckpointError: the file lacks weights of the embedding, holds unexpected ones in the base model, or
            tensors of another shape (:func:`refuse_incomplete_weights`).
    """
    try:
        from transformers import AutoModel
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(_INSTALL) from error
    source = str(name_or_path)
    try:
        # tensors of another shape come back in `loading` (named) instead of a RuntimeError that names no key
        hf_model, loading = AutoModel.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True)
    except RuntimeError as error:  # any other refusal of the weights by transformers
        raise CheckpointError(f"the weights of the transformers model {source!r} do not match its config: "
                              f"{' '.join(str(error).split())[:400]}") from error
    except OSError as error:
        folder = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
        raise FileNotFoundError(
            f"could not load the transformers model {source!r} ({str(error).splitlines()[0][:200]}). Download it on a "
            f"machine with network access (huggingface-cli download {source}, which fills {folder}), or save it "
            f"there with model.save_pretrained(FOLDER) and pass hf:FOLDER."
        ) from error
    refuse_incomplete_weights(source, loading)
    return hf_model.eval()


def refuse_incomplete_weights(source: str, loading: Mapping[str, Any]) -> None:
    """Refuse what ``from_pretrained`` only logs: weights of the embedding missing from the file (transformers
    initialises them at random: the maps would be of another model), unexpected weights inside the base model
    (a variant this converter does not know) and tensors of another shape.

    Args:
        source: the hub name or folder (for the message).
        loading: ``from_pretrained(..., output_loading_info=True)``'s second value.

    Raises:
        CheckpointError: naming the keys.
    """
    def named(key: Any) -> str:  # mismatched keys come as (key, shape in file, shape in model)
        return str(key[0] if isinstance(key, tuple) else key)

    found = {
        "missing keys (transformers would initialise them at random)":
            [k for k in map(named, loading.get("missing_keys", ())) if not k.startswith(_NOT_IN_THE_EMBEDDING)],
        "unexpected keys": [k for k in map(named, loading.get("unexpected_keys", ())) if k.startswith(_BASE_MODEL_PARTS)],
        "keys of another shape": list(map(named, loading.get("mismatched_keys", ()))),
    }
    if problems := [f"{what}: {keys[:4]}" for what, keys in found.items() if keys]:
        raise CheckpointError(f"the weights of the transformers model {source!r} do not match it: " + "; ".join(problems))
