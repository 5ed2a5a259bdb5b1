"""Hugging Face models (tiny random configs, nothing downloaded) as first-class models.

Measured spread: our forward and the transformers forward agree to 2e-7-6e-7 of the embedding's
magnitude here (float32, the same operations in another order); the bound is 1e-5.
"""
from __future__ import annotations

import pytest
import torch
from official_vit import DINO, reference_embedding
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTModel,
)

from ssl_widgets.attr.applicability import not_applicable
from ssl_widgets.attr.spec import listed_names
from ssl_widgets.explain import explain_pair
from ssl_widgets.models import CheckpointError, SSLModel, from_transformers, load_model
from ssl_widgets.models.hf import SUPPORTED
from ssl_widgets.models.position_rules import DINO_RULE

SMALL = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def hf_models() -> dict[str, torch.nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return {
            "Dinov2Model": randomised(Dinov2Model(Dinov2Config(**SMALL)), 1),
            "Dinov2WithRegistersModel": randomised(
                Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**SMALL, num_register_tokens=2)), 2),
            "ViTModel": randomised(ViTModel(ViTConfig(**SMALL, intermediate_size=40, layer_norm_eps=1e-12),
                                            add_pooling_layer=True), 3),
        }


MODELS = hf_models()


def hf_embedding(hf: torch.nn.Module, x_n: torch.Tensor) -> torch.Tensor:
    """The model card's embedding: pooler_output of DINOv2, the class token of ViTModel's last hidden state."""
    with torch.no_grad():
        if isinstance(hf, ViTModel):
            return hf(pixel_values=x_n, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        return hf(pixel_values=x_n).pooler_output


@pytest.mark.parametrize("size", [(32, 32), (24, 24), (48, 48), (40, 24)], ids=str)
@pytest.mark.parametrize("kind", list(MODELS))
def test_embedding_equals_the_transformers_forward(kind, size):
    hf = MODELS[kind]
    model = from_transformers(hf, input_size=32)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4))
    expected = hf_embedding(hf, model.normalize(x))
    with torch.no_grad():
        got = model(x)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5
    assert model.num_prefix_tokens == (3 if "Registers" in kind else 1)
    assert model.meta["source"] == f"transformers {kind}"


def test_a_hub_dinov2_file_and_the_hf_model_give_the_same_embedding_and_maps(tmp_path):
    """The same DINOv2 ViT-S/14 weights in torch.hub's released layout (written here from the HF model by an
    independent mapping) and as a transformers model: equal embeddings at the native 518 px with the HF rule,
    and at 224 px with DINO's rule, and equal maps."""
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                          patch_size=14, layerscale_value=1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        hf = randomised(Dinov2Model(config), 6)
    sd = hf.state_dict()
    hub = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
           "mask_token": sd["embeddings.mask_token"].reshape(1, 384),
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    def get(*keys):  # transformers 4.x names, then 5.x names
        return next(sd[k] for k in keys if k in sd)

    for i in range(12):
        p, a = f"encoder.layer.{i}.", f"encoder.layer.{i}.attention."
        for part in ("weight", "bias"):
            hub[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([get(f"{a}attention.{x}.{part}", f"{a}{y}_proj.{part}")
                                                            for x, y in (("query", "q"), ("key", "k"), ("value", "v"))])
            hub[f"blocks.{i}.attn.proj.{part}"] = get(f"{a}output.dense.{part}", f"{a}o_proj.{part}")
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hub[f"blocks.{i}.{name}.{part}"] = sd[f"{p}{name}.{part}"]
        hub[f"blocks.{i}.ls1.gamma"] = sd[f"{p}layer_scale1.lambda1"]
        hub[f"blocks.{i}.ls2.gamma"] = sd[f"{p}layer_scale2.lambda1"]
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(hub, path)
    from_hub = load_model("dinov2-vits14", weights=path)
    native = from_transformers(hf)
    official = from_transformers(hf, position_rule=DINO_RULE)
    x518 = torch.rand(1, 3, 518, 518, generator=torch.Generator().manual_seed(7))
    x224, y224 = torch.rand(2, 1, 3, 224, 224, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(native(x518), from_hub(x518), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(official(x224), from_hub(x224), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(official(x224), reference_embedding(from_hub.trunk, hub, from_hub.normalize(x224),
                                                                       **DINO), rtol=1e-5, atol=1e-5)
    for method in ("cls-attention", "input-x-gradient"):
        a, b = explain_pair(official, method, x224, y224), explain_pair(from_hub, method, x224, y224)
        for m_a, m_b in zip(a, b):
            assert float((m_a - m_b).abs().max()) <= 1e-4 * float(m_b.abs().max()), method


REGISTERS = from_transformers(MODELS["Dinov2WithRegistersModel"], input_size=32)
PAIR_AND_VIEW_METHODS = listed_names("pair", "view", "joint")


def test_only_the_guided_variants_and_bilrp_do_not_apply():
    """The guided variants need ReLUs (a GELU ViT has none), BiLRP has no attention rules; every other method applies."""
    refused = [name for name in PAIR_AND_VIEW_METHODS if not_applicable(name, REGISTERS)]
    assert "bilrp" in refused and all("guided" in name for name in refused if name != "bilrp")


@pytest.mark.parametrize("method", [n for n in PAIR_AND_VIEW_METHODS if not not_applicable(n, REGISTERS)])
def test_every_pair_method_and_vit_view_runs_on_a_transformers_model(method):
    model = REGISTERS
    g = torch.Generator().manual_seed(9)
    x1, x2 = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    result = explain_pair(model, method, x1, x2, generator=torch.Generator().manual_seed(1))
    assert all(torch.isfinite(torch.as_tensor(m)).all() for m in result)
    assert result[0].shape[-2:] == (32, 32)


def test_classifier_models_unwrap_and_other_models_are_refused():
    from transformers import Dinov2ForImageClassification

    with torch.random.fork_rng(devices=[]):
        classifier = Dinov2ForImageClassification(Dinov2Config(**SMALL, num_labels=3)).eval()
    model = SSLModel.from_transformers(classifier, input_size=32)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model(x), hf_embedding(classifier.dinov2, model.normalize(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="Linear is not supported: from_transformers takes Dinov2Model"):
        from_transformers(torch.nn.Linear(2, 2))


def test_a_saved_folder_loads_offline_and_a_missing_one_says_what_to_download(tmp_path):
    folder = tmp_path / "dinov2-tiny"
    MODELS["Dinov2Model"].save_pretrained(folder)
    model = load_model(f"hf:{folder}")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf_embedding(MODELS["Dinov2Model"], model.normalize(x)),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match=r"huggingface-cli download .*no-such-folder.*hf:FOLDER"):
        load_model(f"hf:{tmp_path / 'no-such-folder'}")


def test_every_supported_transformers_class_has_a_tiny_example():
    """A class added to ``SUPPORTED`` is covered by the parametrised tests here once it has an example in MODELS."""
    assert set(MODELS) == set(SUPPORTED)


def damaged_copies(state: dict[str, torch.Tensor]):
    """``(description, key the message must name, damaged state)``: the largest and the last (alphabetically: the
    final layer norm) weight of the embedding, each removed, joined by an unexpected sibling, and given one more row."""
    used = [k for k in sorted(state) if not k.startswith(("pooler.", "embeddings.mask_token"))]
    for key in dict.fromkeys([max(used, key=lambda k: state[k].numel()), used[-1]]):
        extra = key.rsplit(".", 1)[0] + ".extra_weight"
        yield f"{key} removed", key, {k: v for k, v in state.items() if k != key}
        yield f"{extra} added", extra, dict(state, **{extra: torch.zeros(1)})
        yield f"{key} reshaped", key, dict(state, **{key: torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])})


@pytest.mark.parametrize("kind", list(SUPPORTED))
def test_a_saved_folder_with_a_missing_extra_or_reshaped_weight_is_refused_by_name(tmp_path, kind):
    """transformers' from_pretrained only logs missing weights (and initialises them at random: another model's
    maps), and unexpected ones; ``hf:FOLDER`` refuses both, and other shapes, naming the key."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / kind
    MODELS[kind].save_pretrained(folder)
    file = folder / "model.safetensors"
    state = load_file(file)
    model = load_model(f"hf:{folder}")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf_embedding(MODELS[kind], model.normalize(x)), rtol=1e-5, atol=1e-5)
    for what, key, broken in damaged_copies(state):
        save_file(broken, file, metadata={"format": "pt"})
        with pytest.raises(CheckpointError) as refused:
            load_model(f"hf:{folder}")
        assert key in str(refused.value), f"{kind}, {what}: {refused.value}"


def test_an_unknown_variant_is_named(tmp_path):
    from ssl_widgets.models.hf import convert_state

    hf = MODELS["ViTModel"]
    state = dict(hf.state_dict(), **{"embeddings.extra_token": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected weights \[.embeddings.extra_token.\]"):
        convert_state(state, hf.config, dinov2=False, registers=0)
