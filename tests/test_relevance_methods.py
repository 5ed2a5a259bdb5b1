"""DINO's attention masks, rollout with vit-explain's discard rule and Chefer et al.'s gradient-weighted
attention relevance, each against an independent plain implementation in this file.

Measured spreads (float32 model, CPU): rollout with discard_ratio against the float64 loop below: max |diff|
2.0e-8 (bound 1e-6); attention-relevance against the explicit-qkv re-implementation: max |diff| 2.8e-8 on
maps of magnitude 0.009-0.08 (bound 1e-5). Masks are compared patch for patch (exactly).
"""
from __future__ import annotations

import pytest
import torch
from helpers import small_resnet
from test_hf_models import MODELS
from test_vit_methods import hand_attention, pair, vit_model

from ssl_widgets.attr import AttentionGradientRelevance, AttentionRollout, ClassTokenAttention
from ssl_widgets.attr.cls_attention import mass_mask
from ssl_widgets.core import cosine
from ssl_widgets.explain import explain_pair
from ssl_widgets.models import SSLModel, from_transformers


# -- DINO's masks -----------------------------------------------------------------------------------------
def dino_mask_loop(weights: list[float], threshold: float) -> list[bool]:
    """visualize_attention.py's rule without sorting: a patch is kept when the mass of the patches at or
    below it in the ascending order (ties: earlier position first) exceeds ``1 - threshold`` of the total."""
    total = sum(weights)
    kept = []
    for i, a in enumerate(weights):
        below = sum(b for j, b in enumerate(weights) if b < a or (b == a and j <= i))
        kept.append(below / total > 1 - threshold)
    return kept


def test_mass_mask_equals_dino_rule_with_ties():
    weights = [0.125, 0.25, 0.0625, 0.25, 0.125, 0.0625, 0.0625, 0.0625]  # exact binary fractions, many ties
    for threshold in (0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0):
        assert mass_mask(torch.tensor(weights), threshold).tolist() == dino_mask_loop(weights, threshold), threshold
    assert mass_mask(torch.tensor(weights), 0.5).tolist() == [False, True, False, True] + [False] * 4


def test_cls_attention_threshold_masks_per_head_and_mean():
    model = vit_model(2, reg_tokens=2, no_embed_class=True)
    x1, x2 = pair(seed=3)
    method = ClassTokenAttention(model)
    attns = [hand_attention(model, x, 1)[0, :, 0, 3:] for x in (x1, x2)]  # class token -> patches (no registers)
    for head in (None, 0, 1):
        for threshold in (0.3, 0.6, 0.9):
            result = method.attribute((x1, x2), head=head, threshold=threshold)
            assert result.meta["threshold"] == threshold
            for mask, attn in zip(result, attns):
                row = attn.mean(0) if head is None else attn[head]
                expected = dino_mask_loop(row.double().tolist(), threshold)
                assert mask.flatten().tolist() == [float(k) for k in expected]


def test_cls_attention_threshold_on_tied_attention():
    """A block whose queries and keys are zero attends uniformly: all 16 patches tie; the mask keeps the last
    patches in raster order (worked by hand: 0.4 of the mass -> the patches past 60 %, i.e. the last 7)."""
    model = vit_model(4)
    with torch.no_grad():
        model.trunk.blocks[1].attn.qkv.weight[:24].zero_()
        model.trunk.blocks[1].attn.qkv.bias[:24].zero_()
    x1, x2 = pair(seed=5)
    m1, _ = ClassTokenAttention(model).attribute((x1, x2), head=0, threshold=0.4)
    assert m1.flatten().tolist() == [0.0] * 9 + [1.0] * 7
    assert m1.flatten().tolist() == [float(k) for k in dino_mask_loop([1 / 17] * 16, 0.4)]


def test_threshold_reaches_the_method_through_its_record_and_bad_values_are_named():
    model = vit_model(2)
    x1, x2 = pair(seed=3)
    masked = explain_pair(model, "cls-attention:mask", x1, x2)  # the record's option: DINO's 0.6
    direct = ClassTokenAttention(model).attribute((x1, x2), threshold=0.6)
    assert masked.meta["threshold"] == 0.6
    torch.testing.assert_close(masked[0], explain_pair(model, "cls-attention", x1, x2, threshold=0.6)[0])
    assert sorted(direct[0].unique().tolist()) == [0.0, 1.0]
    assert "threshold" not in explain_pair(model, "cls-attention", x1, x2).meta
    for bad in (0, 1.5, -0.2, True, "0.6"):
        with pytest.raises(ValueError, match=r"threshold must be None or a fraction of the attention mass in \(0, 1\]"):
            ClassTokenAttention(model).attribute((x1, x2), threshold=bad)


# -- rollout with discard_ratio -----------------------------------------------------------------------------
def rollout_loop(attns: list[torch.Tensor], fusion: str, discard_ratio: float) -> torch.Tensor:
    """Abnar & Zuidema with vit-explain's discard rule, entry by entry (one image, row normalisation)."""
    n = attns[0].shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for a in attns:
        heads = a[0].tolist()
        fuse = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[fusion]
        fused = [[fuse([head[i][j] for head in heads]) for j in range(n)] for i in range(n)]
        entries = sorted((fused[i][j], i * n + j) for i in range(n) for j in range(n))
        for _, flat in entries[:int(n * n * discard_ratio)]:
            if flat != 0:  # the class token's attention to itself is spared
                fused[flat // n][flat % n] = 0.0
        block = torch.tensor(fused, dtype=torch.float64) + torch.eye(n, dtype=torch.float64)
        for i in range(n):
            block[i] = block[i] / block[i].sum()
        result = block @ result
    return result


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_with_discard_equals_the_loop(fusion):
    model = vit_model(3, reg_tokens=1, no_embed_class=True)
    with torch.no_grad():  # block 0 attends uniformly: every entry ties, the discard picks by position
        model.trunk.blocks[0].attn.qkv.weight[:24].zero_()
        model.trunk.blocks[0].attn.qkv.bias[:24].zero_()
    x1, x2 = pair(seed=4)
    method = AttentionRollout(model)
    attns = [[hand_attention(model, x, b) for b in range(2)] for x in (x1, x2)]
    for discard_ratio in (0.0, 0.5, 0.9):
        result = method.attribute((x1, x2), head_fusion=fusion, discard_ratio=discard_ratio)
        for m, a in zip(result, attns):
            expected = rollout_loop(a, fusion, discard_ratio)
            expected = expected[0, 2:].reshape(4, 4).float()
            assert float((m[0] - expected).abs().max()) < 1e-6, (fusion, discard_ratio)
    assert method.attribute((x1, x2), head_fusion=fusion, discard_ratio=0.9).meta["discard_ratio"] == 0.9
    plain = method.attribute((x1, x2), head_fusion=fusion)
    assert "discard_ratio" not in plain.meta
    assert not torch.allclose(plain[0], method.attribute((x1, x2), head_fusion=fusion, discard_ratio=0.9)[0])


def test_rollout_record_option_and_bad_discard_ratio():
    model = vit_model(3)
    x1, x2 = pair(seed=4)
    published = explain_pair(model, "attention-rollout:max+discard", x1, x2)
    assert published.meta["head_fusion"] == "max" and published.meta["discard_ratio"] == 0.9
    for bad in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match=r"discard_ratio must be a fraction in \[0, 1\)"):
            AttentionRollout(model).attribute((x1, x2), discard_ratio=bad)
    with pytest.raises(ValueError, match=r"start_block -1 \(block 1\) comes after end_block 0 \(block 0\)"):
        AttentionRollout(model).attribute((x1, x2), start_block=-1, end_block=0)


# -- attention-relevance -------------------------------------------------------------------------------------
def explicit_relevance(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, blocks: range):
    """Chefer et al.'s rule re-implemented: every attention block's forward replaced by an explicit one from
    its qkv projection (so the attention matrix is a tensor of our own), the similarity's gradient by autograd."""
    trunk = model.trunk
    stored: list[torch.Tensor] = []

    def explicit_forward(attn_module):
        def forward(x, attn_mask=None, **_):
            b, n, c = x.shape
            h = attn_module.num_heads
            qkv = attn_module.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            a = torch.softmax(q @ k.transpose(-2, -1) / (c // h) ** 0.5, dim=-1)
            stored.append(a)
            return attn_module.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        return forward

    for blk in trunk.blocks:
        blk.attn.forward = explicit_forward(blk.attn)
    try:
        z1 = model(x1.clone().requires_grad_(True))
        first = list(stored)
        stored.clear()
        z2 = model(x2.clone().requires_grad_(True))
        second = list(stored)
    finally:
        for blk in trunk.blocks:
            del blk.attn.forward
    with torch.no_grad():
        assert float((z1 - model(x1)).abs().max()) < 1e-5  # the explicit forward is the model's forward
    similarity = cosine(z1, z2).sum()
    grads = torch.autograd.grad(similarity, first + second)
    depth = len(first)
    maps = []
    for attns, gs in ((first, grads[:depth]), (second, grads[depth:])):
        n = attns[0].shape[-1]
        r = torch.eye(n, dtype=torch.float64)
        for b in blocks:
            a, g = attns[b][0].detach().double(), gs[b][0].double()
            heads = a.shape[0]
            weighted = sum(torch.relu(g[h] * a[h]) for h in range(heads)) / heads
            r = r + weighted @ r
        maps.append(r[0, model.num_prefix_tokens:].float())
    return maps


def hf_model(name):
    return from_transformers(MODELS[name], input_size=32)


@pytest.mark.parametrize("build, size", [(lambda: vit_model(6), 16),
                                         (lambda: vit_model(7, reg_tokens=2, no_embed_class=True), 16),
                                         (lambda: hf_model("ViTModel"), 32),
                                         (lambda: hf_model("Dinov2WithRegistersModel"), 32)],
                         ids=["timm", "timm-registers", "hf-vit", "hf-dinov2-registers"])
def test_attention_relevance_equals_explicit_reimplementation(build, size):
    model = build()
    x1, x2 = pair(size, size, seed=8)
    depth = len(model.trunk.blocks)
    method = AttentionGradientRelevance(model)
    for start, blocks in ((0, range(depth)), (-1, range(depth - 1, depth))):
        result = method.attribute((x1, x2), start_block=start)
        expected = explicit_relevance(model, x1, x2, blocks)
        for m, e in zip(result, expected):
            assert m.shape == (1, size // model.patch_size, size // model.patch_size)
            assert float((m.flatten() - e).abs().max()) < 1e-5
            assert float(e.abs().max()) > 1e-6  # not a trivially zero map
    with torch.no_grad():
        torch.testing.assert_close(result.similarity, cosine(model(x1), model(x2)))


def test_attention_relevance_depends_on_the_other_image():
    model = vit_model(6)
    x1, x2 = pair(seed=8)
    _, x3 = pair(seed=9)
    m_a, _ = AttentionGradientRelevance(model).attribute((x1, x2))
    m_b, _ = AttentionGradientRelevance(model).attribute((x1, x3))
    assert float((m_a - m_b).abs().max()) > 1e-4 * float(m_a.abs().max())
    batch, _ = AttentionGradientRelevance(model).attribute((torch.cat([x1, x1]), torch.cat([x2, x3])))
    assert float((batch - torch.cat([m_a, m_b])).abs().max()) < 1e-6  # each row its own pair's gradient


def test_attention_relevance_refuses_cnns_and_bad_block_ranges_and_restores_the_model():
    with pytest.raises(ValueError, match="attention-relevance applies to Vision Transformers"):
        AttentionGradientRelevance(SSLModel(small_resnet(head=False), None))
    model = vit_model(6)
    model.train()
    fused = [blk.attn.fused_attn for blk in model.trunk.blocks]
    method = AttentionGradientRelevance(model)
    x1, x2 = pair(seed=8)
    with pytest.raises(ValueError, match=r"start_block 1 \(block 1\) comes after end_block 0"):
        method.attribute((x1, x2), start_block=1, end_block=0)
    with pytest.raises(ValueError, match="block 2 out of range: the model has 2 attention blocks"):
        method.attribute((x1, x2), end_block=2)
    with pytest.raises(ValueError, match="unknown block 'blocks.9'"):
        method.attribute((x1, x2), start_block="blocks.9")
    with pytest.raises(ValueError, match="not a multiple of the patch size"):  # raised inside the forward
        method.attribute((torch.rand(1, 3, 18, 18), torch.rand(1, 3, 18, 18)))
    assert model.training and [blk.attn.fused_attn for blk in model.trunk.blocks] == fused
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())
    method.attribute((x1, x2))
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["cls-attention:mask", "attention-rollout:max+discard", "attention-relevance"])
def test_cli_reaches_the_settings_through_the_records(method, tmp_path, capsys):
    from ssl_widgets.cli import main

    out = tmp_path / "figure.png"
    assert main(["explain", "chelsea", "--model", "tiny-dino-vit", "--method", method, "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and f"{method} on tiny-dino-vit" in capsys.readouterr().out
    assert main(["explain", "chelsea", "--model", "tiny-simclr", "--method", method, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not apply to model 'tiny-simclr'" in err and "Vision Transformer" in err
