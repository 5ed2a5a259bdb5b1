"""The token-level occlusion evaluator of timm Vision Transformers (``_occlusion_engine/tokens.py``): exact against
full forward passes, taken only where it applies, and leaving the model as it found it."""
import pytest
import timm
import torch
from torch import nn

from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion, CopyEvaluator
from ssl_widgets.attr.engine import Cancelled
from ssl_widgets.models import SSLModel
from ssl_widgets.models.position_rules import DINO_RULE, ReferenceViT

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
#: plain (class token), DINOv2-like (register tokens, positions without the prefix, LayerScale, qk-norm), and the
#: package's ReferenceViT (DINO's position rule at a non-native size)
CONFIGS = {
    "plain": lambda: timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True, **TINY),
    "registers-layerscale": lambda: timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True, reg_tokens=2,
                                                      no_embed_class=True, init_values=0.1, qk_norm=True, **TINY),
    "reference-dino-rule": lambda: ReferenceViT(position_rule=DINO_RULE, **TINY),
}


def vit(config="plain", pooling="cls", seed=0):
    torch.manual_seed(seed)
    trunk = CONFIGS[config]()
    with torch.no_grad():  # non-trivial positions, tokens and LayerScale
        for name, p in trunk.named_parameters():
            if "pos_embed" in name or "token" in name or "gamma" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return SSLModel(trunk, pooling=pooling, num_prefix_tokens=trunk.num_prefix_tokens, patch_size=8,
                    mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).eval()


def images(h=32, w=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g), torch.rand(1, 3, h, w, generator=g)


def pasted(bases, local, y0, x0, bid):
    """The full copies, built by hand."""
    out = bases[bid].clone()
    h, w = local.shape[2:]
    for b in range(local.shape[0]):
        out[b, :, int(y0[b]):int(y0[b]) + h, int(x0[b]):int(x0[b]) + w] = local[b]
    return out


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_token_path_equals_the_full_forward_of_each_copy(config, pooling):
    """Boxes off the patch grid, across patch borders, at the right and bottom edges, on two bases (measured max
    |diff| <= 8e-7 against forward_normalized; bound 1e-4)."""
    model = vit(config, pooling)
    x1, x2 = images()
    bases = model.normalize(torch.cat([x1, x2]))
    g = torch.Generator().manual_seed(3)
    local = torch.randn(6, 3, 11, 7, generator=g)
    y0, x0 = torch.tensor([0, 3, 21, 13, 5, 8]), torch.tensor([0, 9, 33, 16, 30, 1])  # 21 + 11 = 32, 33 + 7 = 40
    bid = torch.tensor([0, 1, 0, 1, 1, 0])
    with CopyEvaluator(model, workers=1).session() as session:
        assert session.tokens is not None and session.incremental
        assert session.tokens.first_token_only == (pooling == "cls")
        state, z = session.prepare(bases)
        out = session.embed(state, local, y0, x0, bid)
    with torch.no_grad():
        expected = model.forward_normalized(pasted(bases, local, y0, x0, bid))
        torch.testing.assert_close(z, model.forward_normalized(bases), rtol=0, atol=1e-4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", [ConditionalOcclusion, ContextAgnosticOcclusion])
@pytest.mark.parametrize("config", ["plain", "registers-layerscale"])
def test_occlusion_maps_equal_the_full_forward_path(method, config):
    """Windows of 12 at stride 4 (never patch-aligned as a whole) on 32 x 40 images: the token path's maps equal those
    of full forward passes (``CopyEvaluator(incremental=False)``; measured max |diff| 2.5e-5, context-agnostic's cosine of
    differences; bound 1e-4)."""
    model = vit(config)
    x1, x2 = images()
    fast = method(model).attribute((x1, x2), 12, 4, grid=True, perturbations_per_eval=7)
    plain = method(model, evaluator=CopyEvaluator(model, incremental=False)).attribute((x1, x2), 12, 4, grid=True)
    assert fast.meta["incremental"] is True and plain.meta["incremental"] is False
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


class PatchTokens(nn.Module):
    """A token trunk that is no timm VisionTransformer: patch projection, one linear layer, class token."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.mix = nn.Linear(16, 16)

    def forward(self, x):
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        return tokens + self.mix(tokens.mean(1, keepdim=True))


def slow_conditional(model, x1, x2, window, stride):
    """Conditional occlusion's grid of view 1, one full forward pass per window."""
    fill = model.fill_value.view(1, 3, 1, 1)
    with torch.no_grad():
        z1, z2 = model(x1), model(x2)
        base = torch.cosine_similarity(z1, z2)
        rows = range(0, x1.shape[2] - window + 1, stride)
        cols = range(0, x1.shape[3] - window + 1, stride)
        out = torch.zeros(len(rows), len(cols))
        for i, y in enumerate(rows):
            for j, x in enumerate(cols):
                occluded = x1.clone()
                occluded[:, :, y:y + window, x:x + window] = fill
                out[i, j] = base - torch.cosine_similarity(model(occluded), z2)
    return out


def test_fallback_for_a_hooked_trunk_and_a_non_timm_token_trunk():
    """A forward hook on the last block (which the token path would bypass) and a token trunk of its own: both run by
    full forward passes, exactly (measured max |diff| 1.2e-7 against a per-window loop; bound 1e-4)."""
    hooked = vit()
    hooked.trunk.blocks[-1].register_forward_hook(lambda module, args, out: out * 2.0 + 1.0)
    torch.manual_seed(0)
    custom = SSLModel(PatchTokens(), pooling="cls", num_prefix_tokens=1, patch_size=8).eval()
    x1, x2 = images()
    for model in (hooked, custom):
        with CopyEvaluator(model).session() as session:
            assert session.tokens is None
        result = ConditionalOcclusion(model).attribute((x1, x2), 12, 4, grid=True)
        torch.testing.assert_close(result[0][0], slow_conditional(model, x1, x2, 12, 4), rtol=0, atol=1e-4)


def model_state(model):
    return ([(name, m.training) for name, m in model.named_modules()],
            [(name, p.requires_grad) for name, p in model.named_parameters()],
            [(name, dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()])


def test_model_state_is_unchanged_after_a_call_and_after_a_call_that_raises():
    model = vit("registers-layerscale")
    model.trunk.blocks[0].train()  # a mixed mode and mixed requires_grad flags, as a user may leave them
    model.trunk.pos_embed.requires_grad_(False)
    before = model_state(model)
    x1, x2 = images()
    ContextAgnosticOcclusion(model).attribute((x1, x2), 16, 8, perturbations_per_eval=4)
    assert model_state(model) == before

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        ConditionalOcclusion(model).attribute((x1, x2), 16, 8, perturbations_per_eval=4, on_progress=cancel)
    assert model_state(model) == before
    with pytest.raises(ValueError, match="sliding_window_shapes"):
        ConditionalOcclusion(model).attribute((x1, x2), 12, 4, fill="drop-tokens")
    assert model_state(model) == before
