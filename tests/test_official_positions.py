"""Position embeddings resampled as DINO, DINOv2 and transformers do, checked against
``tests/official_vit.py`` (an independent re-implementation of each reference forward), at grids
smaller, larger and equal to the training grid, square and not.

Measured spread: the package's forward and the reference agree to 0 to 4e-7 of the embedding's
magnitude at every size here and with ViT-S weights at 224/238/240/476/480/518 px
(``benchmarks/check_official_vit.py``, which runs the official model code itself); the bound is 1e-5.
The timm rule (antialias, no offset) differs from DINO's by 1e-3 to 1e-1 at these sizes, so the
bound separates the rules by two orders of magnitude.
"""
from __future__ import annotations

import pytest
import torch
from official_vit import DINO, DINOV2_REGISTERS, TRANSFORMERS, reference_embedding
from timm.models.vision_transformer import VisionTransformer

from ssl_widgets.models.position_rules import DINO_RULE, HF_RULE, REGISTERS_RULE, ReferenceViT

ARCH = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2, "num_classes": 0}
SIZES = [(32, 32), (24, 24), (48, 48), (40, 24), (16, 56), (72, 72)]
RULES = {"dino": (DINO_RULE, DINO), "dinov2-registers": (REGISTERS_RULE, DINOV2_REGISTERS),
         "transformers": (HF_RULE, TRANSFORMERS)}


def randomised(vit: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return vit.eval()


def reference_state(vit: torch.nn.Module, registers: torch.Tensor | None) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in vit.state_dict().items() if k in ("cls_token", "pos_embed") or k.startswith("patch_")}
    if registers is not None:
        state["register_tokens"] = registers
    return state


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("rule", list(RULES))
def test_reference_vit_equals_the_reference_forward(rule, size):
    ours_rule, reference_rule = RULES[rule]
    vit = randomised(ReferenceViT(position_rule=ours_rule, global_pool="token", **ARCH), 1)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    expected = reference_embedding(vit, reference_state(vit, None), x, **reference_rule)
    with torch.no_grad():
        got = vit.forward_features(x)[:, 0]
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.parametrize("size", [(24, 24), (48, 48), (40, 24)], ids=str)
def test_registers_follow_the_dinov2_layout(size):
    """timm's no_embed_class layout (class position folded into the class token, the loader's conversion
    of a DINOv2 register file) with REGISTERS_RULE equals DINOv2's forward on the file's own layout."""
    source = randomised(VisionTransformer(global_pool="token", dynamic_img_size=True, **ARCH), 3)
    registers = torch.randn(1, 4, 24, generator=torch.Generator().manual_seed(4))
    state = reference_state(source, registers)
    converted = dict(source.state_dict())
    pos = converted.pop("pos_embed")
    converted.update(cls_token=converted["cls_token"] + pos[:, :1], pos_embed=pos[:, 1:], reg_token=registers)
    ours = ReferenceViT(position_rule=REGISTERS_RULE, global_pool="token", reg_tokens=4, no_embed_class=True, **ARCH)
    ours.load_state_dict(converted)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
    expected = reference_embedding(source, state, x, **DINOV2_REGISTERS)
    with torch.no_grad():
        got = ours.eval().forward_features(x)[:, 0]
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


def test_the_check_tells_the_rules_apart():
    """timm's own resampling (antialias, output size) is not DINO's: the 1e-5 bound above would catch it."""
    timm_vit = randomised(VisionTransformer(global_pool="token", dynamic_img_size=True, **ARCH), 1)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    expected = reference_embedding(timm_vit, reference_state(timm_vit, None), x, **DINO)
    with torch.no_grad():
        got = timm_vit.forward_features(x)[:, 0]
    assert float((got - expected).abs().max() / expected.abs().max()) > 1e-3


def test_reference_vit_refuses_a_fixed_size():
    with pytest.raises(ValueError, match="dynamic_img_size must be True"):
        ReferenceViT(position_rule=DINO_RULE, dynamic_img_size=False, **ARCH)
