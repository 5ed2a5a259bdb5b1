"""Every method on a small ViT, and the ViT-native views, against hand computations."""
import pytest
import torch
import torch.nn.functional as F
from helpers import small_resnet
from timm.models.vision_transformer import VisionTransformer

from ssl_widgets.attr import (
    AttentionRollout,
    AveragedTransforms,
    ClassTokenAttention,
    ConditionalOcclusion,
    ContextAgnosticOcclusion,
    InteractionCAM,
    PairGradCAM,
    PairInputXGradient,
    PairSmoothGrad,
    PairwiseOcclusion,
    PatchFeaturePCA,
    PixelInvariance,
    cam_variants,
    get_method,
)
from ssl_widgets.explain import explain_pair
from ssl_widgets.metrics.insertion_deletion import insertion_deletion
from ssl_widgets.models import SSLModel


def tiny_vit(seed=0, **extra):
    arch = {"img_size": 16, "patch_size": 4, "embed_dim": 12, "depth": 2, "num_heads": 2, "num_classes": 0, "global_pool": "token"}
    with torch.random.fork_rng(devices=[]):  # timm initialises from the global RNG: seeded here, restored after
        torch.manual_seed(seed)
        vit = VisionTransformer(**{**arch, **extra})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return vit.eval()


def vit_model(seed=0, **extra):
    return SSLModel.from_timm(tiny_vit(seed, **extra), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def pair(h=16, w=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g), torch.rand(1, 3, h, w, generator=g)


def grid(tokens, prefix, h, w):
    """(B, N, C) -> (B, C, h, w) by an explicit loop over patches in row-major order."""
    out = torch.zeros(tokens.shape[0], tokens.shape[2], h, w)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = tokens[:, prefix + i * w + j]
    return out


@pytest.mark.parametrize("extra", [{}, {"reg_tokens": 2, "no_embed_class": True}])
def test_token_contract(extra):
    model = vit_model(**extra)
    prefix = 1 + extra.get("reg_tokens", 0)
    assert model.num_prefix_tokens == prefix and model.default_cam_layer == "blocks.1.norm1"
    x, _ = pair(16, 24)
    with torch.no_grad():
        tokens = model.trunk.forward_features(model.normalize(x))
        torch.testing.assert_close(model.features(x), grid(tokens, prefix, 4, 6))
        torch.testing.assert_close(model(x), tokens[:, 0])
        mean_model = SSLModel(model.trunk, pooling="mean", num_prefix_tokens=prefix, patch_size=4,
                              mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
        torch.testing.assert_close(mean_model(x), tokens[:, prefix:].mean(1))
    assert mean_model.default_cam_layer is None
    with pytest.raises(ValueError, match="18x16 is not a multiple of the patch size 4"):
        model(torch.rand(1, 3, 18, 16))
    with pytest.raises(ValueError, match="needs patch_size"):
        SSLModel(model.trunk, pooling="cls", num_prefix_tokens=1)


def hand_attention(model, x, block):
    """softmax(q k^T / sqrt(d)) of a block, from its qkv projection applied to its norm1 output."""
    captured = []
    blk = model.trunk.blocks[block]
    handle = blk.norm1.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    t = captured[0]
    b, n, c = t.shape
    heads = blk.attn.num_heads
    qkv = blk.attn.qkv(t).reshape(b, n, 3, heads, c // heads)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)  # (B, heads, N, N)


def test_cls_attention_equals_qkv_computation():
    model = vit_model()
    model.train()
    for blk in model.trunk.blocks:
        blk.attn.fused_attn = True
    x1, x2 = pair()
    method = ClassTokenAttention(model)
    for block, head in ((-1, None), (0, 1), ("blocks.1", 0)):
        m1, m2 = method.attribute((x1, x2), block=block, head=head)
        index = 1 if block in (-1, "blocks.1") else 0
        for m, x in ((m1, x1), (m2, x2)):
            attn = hand_attention(model.eval(), x, index)
            row = attn[:, :, 0, 1:].mean(1) if head is None else attn[:, head, 0, 1:]
            torch.testing.assert_close(m, row.reshape(1, 4, 4), rtol=1e-5, atol=1e-6)
            model.train()
    assert model.training and all(blk.attn.fused_attn for blk in model.trunk.blocks)
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="head 5 out of range"):
        method.attribute((x1, x2), head=5)
    with pytest.raises(ValueError, match="block 2 out of range"):
        method.attribute((x1, x2), block=2)


def test_attention_rollout_equals_hand_loop():
    model = vit_model(3, reg_tokens=1, no_embed_class=True)
    x1, x2 = pair(seed=4)
    m1, _ = AttentionRollout(model).attribute((x1, x2), head_fusion="max")
    attns = [hand_attention(model, x1, b) for b in range(2)]
    n = attns[0].shape[-1]
    result = torch.eye(n)
    for a in attns:
        fused = a[0].amax(0) + torch.eye(n)
        fused = fused / fused.sum(1, keepdim=True)
        result = fused @ result
    torch.testing.assert_close(m1[0], result[0, 2:].reshape(4, 4), rtol=1e-5, atol=1e-6)


def test_feature_pca_joint_fit():
    model = vit_model(5)
    x1, x2 = pair(seed=6)
    r1, r2 = PatchFeaturePCA(model).attribute((x1, x2))
    assert r1.shape == (1, 3, 4, 4) and 0 <= float(r1.min()) and float(r1.max()) <= 1
    s2, s1 = PatchFeaturePCA(model).attribute((x2, x1))  # colours follow the features, not the order
    torch.testing.assert_close(s1, r1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, r2, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        rows = torch.cat([model.features(x).flatten(2)[0].T for x in (x1, x2)]).double()
    centred = rows - rows.mean(0)
    _, vecs = torch.linalg.eigh(centred.T @ centred)
    top = vecs[:, -1]
    top = top * torch.sign(top[top.abs().argmax()])
    proj = centred @ top
    proj = (proj - proj.min()) / (proj.max() - proj.min())
    torch.testing.assert_close(r1[0, 0].flatten().double(), proj[:16], atol=1e-5, rtol=1e-5)


def test_vit_views_refuse_a_cnn():
    model = small_resnet()
    for cls in (ClassTokenAttention, AttentionRollout):
        with pytest.raises(ValueError, match="applies to Vision Transformers.*convolutional"):
            cls(model)
    r1, _ = PatchFeaturePCA(model).attribute(pair(32, 32))  # PCA needs only a map: CNNs work
    assert r1.shape == (1, 3, 1, 1)


def hand_cam(model, x1, x2, layer_module, prefix, pooling=None):
    captured = []
    handle = layer_module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    x = torch.cat([x1, x2])
    z = model(x)
    handle.remove()
    sim = F.cosine_similarity(z[:1], z[1:], eps=1e-8).sum()
    (g,) = torch.autograd.grad(sim, captured)
    a = captured[0].detach()
    maps = []
    for k in range(2):
        ak, gk = grid(a[k:k + 1], prefix, 4, 4), grid(g[k:k + 1], prefix, 4, 4)
        maps.append((ak, gk))
    if pooling == "max":
        w = maps[0][0].amax(dim=(2, 3)) * maps[1][0].amax(dim=(2, 3))
        return [(ak * gk.clamp(min=0) * w[:, :, None, None]).sum(1) for ak, gk in maps]
    return [(ak * gk.clamp(min=0)).sum(1) for ak, gk in maps]


def test_token_grid_cam_equals_hand_computation():
    model = vit_model(7)
    x1, x2 = pair(seed=8)
    m1, m2 = PairGradCAM(model).attribute((x1, x2))
    e1, e2 = hand_cam(model, x1, x2, model.trunk.blocks[1].norm1, 1)
    torch.testing.assert_close(m1, e1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m2, e2, rtol=1e-4, atol=1e-6)
    assert float(e1.abs().sum()) > 0
    assert PairGradCAM(model).attribute((x1, x2)).meta["layer"] == "blocks.1.norm1"
    i1, _ = InteractionCAM(model, "blocks.0").attribute((x1, x2), pooling="max")
    h1, _ = hand_cam(model, x1, x2, model.trunk.blocks[0], 1, pooling="max")
    torch.testing.assert_close(i1, h1, rtol=1e-4, atol=1e-6)
    variants = cam_variants(model, (x1, x2), ["interaction-cam:attention+gi", "interaction-cam:mean"],
                            layer="blocks.1.attn")
    assert all(r[0].shape == (1, 4, 4) and torch.isfinite(r[0]).all() for r in variants.values())
    qkv, _ = PairGradCAM(model, "blocks.1.attn.qkv").attribute((x1, x2))  # 3C channels: still a token layer
    pe, _ = PairGradCAM(model, "patch_embed").attribute((x1, x2))  # timm's (B, h, w, C) patch grid
    with torch.no_grad():
        emb = model.trunk.patch_embed(model.normalize(x1))
    assert qkv.shape == pe.shape == (1, 4, 4) and emb.shape == (1, 4, 4, 12)
    with pytest.raises(ValueError, match="'fc_norm' does not output one .*token sequence per forward pass"):
        PairGradCAM(model, "fc_norm").attribute((x1, x2))  # not reached by forward_features
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        PairGradCAM(model).attribute(pair(18, 16))


def test_occlusion_on_vit_is_exact_full_forwards():
    model = vit_model(9)
    x1, x2 = pair(seed=10)
    result = ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=8, strides=4, grid=True,
                                                   incremental=True, perturbations_per_eval=3)
    assert result.meta["incremental"] is True  # token by token (_occlusion_engine/tokens.py), exact
    fill = model.fill_value.view(1, 3, 1, 1)
    with torch.no_grad():
        z1, z2 = model(x1), model(x2)
        base = F.cosine_similarity(z1, z2, eps=1e-8)
        expected = torch.zeros(3, 3)
        for i in range(3):
            for j in range(3):
                xo = x1.clone()
                xo[:, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8] = fill
                expected[i, j] = base - F.cosine_similarity(model(xo), z2, eps=1e-8)
    torch.testing.assert_close(result[0][0], expected, rtol=1e-4, atol=1e-5)
    ca = ContextAgnosticOcclusion(model).attribute((x1, x2), sliding_window_shapes=8, strides=8, grid=True)
    assert ca[0].shape == (1, 2, 2) and torch.isfinite(ca[0]).all()
    po = PairwiseOcclusion(model).attribute((x1, x2), n_samples=6, generator=torch.Generator().manual_seed(0),
                                            erased_pixels="mask")
    assert po[0].shape == (1, 16, 16) and float(po[0].max() + po[1].max()) > 0  # credited to one image per draw


def test_gradient_methods_on_vit():
    model = vit_model(11)
    model.train()
    x1, x2 = pair(seed=12)
    m1, _ = PairInputXGradient(model).attribute((x1, x2))
    a = model.normalize(x1).requires_grad_(True)
    with torch.no_grad():
        z2 = model.eval()(x2)
    (g,) = torch.autograd.grad(F.cosine_similarity(model.forward_normalized(a), z2, eps=1e-8).sum(), a)
    torch.testing.assert_close(m1, (a.detach() * g).abs().amax(1), rtol=1e-4, atol=1e-7)
    model.train()
    sg = PairSmoothGrad(model).attribute((x1, x2), n_samples=3, generator=torch.Generator().manual_seed(0))
    at = AveragedTransforms(model).attribute((x1, x1 * 0.8), steps=3)
    for result in (sg, at):
        assert result[0].shape == (1, 16, 16) and torch.isfinite(result[0]).all() and float(result[0].max()) > 0
    for cls in (PairInputXGradient, AveragedTransforms):
        with pytest.raises(ValueError, match="guided backpropagation is defined for ReLU networks.*GELU"):
            cls(model).attribute((x1, x2), guided=True)
    assert model.training and not any(m._forward_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_pixel_invariance_and_metrics_on_vit():
    model = vit_model(13)
    x1, x2 = pair(seed=14)
    heat = PixelInvariance(model).attribute(x1, n_samples=8, size=8, epochs=3,
                                            generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(heat).all()
    m1, m2 = PairGradCAM(model).attribute((x1, x2))
    metric = insertion_deletion(model, x1, x2, m1, m2, mode="deletion", step=64)
    assert torch.isfinite(torch.as_tensor(metric.score if hasattr(metric, "score") else metric[0])).all()


@pytest.mark.parametrize("name", ["cls-attention", "attention-rollout", "feature-pca", "grad-cam",
                                  "interaction-cam:max+gi"])
def test_explain_pair_on_vit(name):
    model = vit_model(15)
    x1, x2 = pair(seed=16)
    result = explain_pair(model, name, x1, x2)
    expected = (1, 3, 16, 16) if name == "feature-pca" else (1, 16, 16)
    assert result[0].shape == expected and result.meta["method"] == name
    assert get_method(name)[0] is not None


def test_explorer_lists_token_layers_and_explains_a_vit():
    from ssl_widgets.widgets.explorer import Explorer

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=12, depth=2, num_heads=2, num_classes=0,
                            dynamic_img_size=True).eval()
    model = SSLModel.from_timm(vit, name="tiny-test-vit")
    e = Explorer(model=model, threaded=False, display_size=64, method="grad-cam")
    layers = [value for _, value in e.layer_select.options]
    assert {"blocks.1", "blocks.1.norm1", "blocks.1.attn", "norm"} <= set(layers)
    assert e.last_error is None and e.maps[0].shape == (32, 32)
    e.layer_select.value = "blocks.0"
    assert e.last_error is None and e.maps[0].shape == (32, 32)
