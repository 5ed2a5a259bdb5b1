"""SSLModel, input validation and the shipped default models."""
import pytest
import torch
from helpers import seeded_init, small_resnet, write_image_folder
from torch import nn

from ssl_widgets.models import SSLModel, available_models, load_model
from ssl_widgets.models.architectures import mlp_head, tiny_resnet18_trunk


def tiny_model(normalized=True):
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    head = nn.Linear(4, 2)
    seeded_init(trunk, 0), seeded_init(head, 1)
    kwargs = dict(mean=(0.5, 0.25, 0.125), std=(0.5, 0.5, 0.25)) if normalized else {}
    return SSLModel(trunk, head, input_size=8, **kwargs)


def test_forward_is_head_of_pooled_trunk_of_normalised_input():
    model = tiny_model()
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) / (2 * 3 * 64)
    mean = torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.5, 0.25]).view(1, 3, 1, 1)
    expected = model.head(model.trunk((x - mean) / std).mean(dim=(2, 3)))
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model.features(x), model.trunk((x - mean) / std))
    assert model(x).shape == (2, 2)


def test_fill_value_is_zero_in_input_space():
    model = tiny_model()
    fill = model.fill_value.view(1, 3, 1, 1).expand(1, 3, 8, 8)
    torch.testing.assert_close(model.normalize(fill), torch.zeros(1, 3, 8, 8))
    assert tiny_model(normalized=False).fill_value.tolist() == [0.0, 0.0, 0.0]


def test_similarity_is_cosine_of_embeddings():
    model = tiny_model()
    x1, x2 = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    expected = nn.functional.cosine_similarity(model(x1), model(x2), dim=-1)
    torch.testing.assert_close(model.similarity(x1, x2), expected)
    torch.testing.assert_close(model.similarity(x1, x1), torch.ones(3))


def test_layer_names_and_unknown_layer():
    trunk = tiny_resnet18_trunk(8)
    model = SSLModel(trunk, mlp_head([64, 16]), input_size=32)
    names = model.layer_names()
    assert {"conv1", "layer1", "layer4", "layer4.1.conv2"} <= set(names)
    assert model.get_layer("layer4") is trunk.layer4
    with pytest.raises(ValueError, match="unknown layer 'layer9'.*layer4"):
        model.get_layer("layer9")


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.zeros(3, 8, 8), ValueError, "shape \\(B, 3, H, W\\); got 3 dimensions"),
        (torch.zeros(1, 1, 8, 8), ValueError, "3 \\(RGB\\) channels"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, "uint8"),
        (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_are_named(bad, error, message):
    with pytest.raises(error, match=message):
        tiny_model()(bad)


def test_mean_without_std_is_rejected():
    with pytest.raises(ValueError, match="both mean and std"):
        SSLModel(nn.Identity(), mean=(0.5, 0.5, 0.5))


def test_unknown_model_name_lists_the_zoo():
    with pytest.raises(ValueError, match="unknown model 'resnet-9000'.*tiny-simclr"):
        load_model("resnet-9000")


def test_zoo_lists_every_model_of_the_api():
    assert set(available_models()) == {
        "tiny-simclr", "tiny-barlow-twins", "tiny-simsiam", "simclr-v2-r50-1x", "simclr-v2-r50-2x",
        "barlow-twins-r50", "simsiam-r50", "resnet50-supervised", "tiny-dino-vit", "dino-r50", "dino-vits16",
        "dino-vitb16", "dinov2-vits14", "dinov2-vits14-reg",
    }


@pytest.mark.parametrize("name", ["tiny-simclr", "tiny-barlow-twins"])
def test_shipped_models_load_offline(name):
    # load time is measured in benchmarks/, not asserted here
    model = load_model(name)
    assert not model.training and model.name == name and model.input_size == 112
    assert model.normalized
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        z = model(x)
        fmap = model.features(x)
    assert z.shape[0] == 2 and torch.isfinite(z).all()
    assert fmap.shape == (2, 256, 7, 7)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_shipped_models_are_trained_not_random():
    """A trained model separates different images far more than a random one (cos << 0.99)."""
    from ssl_widgets.data import load_image

    a, b = load_image("chelsea", 112), load_image("rocket", 112)
    for name in ["tiny-simclr", "tiny-barlow-twins"]:
        model = load_model(name)
        with torch.no_grad():
            assert float(model.similarity(a, b)) < 0.8


def test_resnet_trunk_output_stride():
    trunk = tiny_resnet18_trunk(8)
    assert trunk(torch.zeros(1, 3, 112, 112)).shape == (1, 64, 7, 7)


def test_test_helpers_leave_the_global_rng_alone(tmp_path):
    """The shared test helpers seed local generators only: the global RNG's state is the same after them."""
    state = torch.get_rng_state()
    a = small_resnet(seed=3)
    write_image_folder(tmp_path, n=2)
    assert torch.equal(torch.get_rng_state(), state)
    b = small_resnet(seed=3)  # and the same seed gives the same model
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
