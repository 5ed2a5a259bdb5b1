"""The single-method panels of the ViT views (issue 9 item 7): class-token attention and patch-feature PCA."""
import torch

from ssl_widgets.explain import explain_pair
from ssl_widgets.widgets import AttentionPanel, FeaturePCAPanel

VIT = "tiny-dino-vit"


def test_attention_panel_map_is_the_methods_map_for_the_chosen_block_and_head():
    panel = AttentionPanel(VIT, threaded=False, display_size=64)
    model = panel.context.model()
    x1, x2 = panel.current_pair()
    assert len(panel.method_controls) == 1 and panel.status.value == "cls-attention" and panel.last_error is None
    expected = explain_pair(model, "cls-attention", x1, x2, block=-1, head=None)
    torch.testing.assert_close(panel.maps[0], expected[0][0])
    torch.testing.assert_close(panel.maps[1], expected[1][0])
    controls = panel.method_controls[0]
    controls.block.value, controls.head.value = 0, 1
    expected = explain_pair(model, "cls-attention", x1, x2, block=0, head=1)
    torch.testing.assert_close(panel.maps[0], expected[0][0])
    torch.testing.assert_close(panel.maps[1], expected[1][0])
    assert not torch.allclose(expected[0][0], explain_pair(model, "cls-attention", x1, x2, block=-1)[0][0])


def test_attention_panel_on_a_cnn_says_it_does_not_apply():
    panel = AttentionPanel(threaded=False, display_size=64)
    assert "does not apply" in panel.status.value and "'cls-attention'" in panel.status.value
    assert panel.maps == (None, None) and panel.last_error is None and panel.view1.value


def test_feature_pca_panel_map_is_the_methods_map_at_the_chosen_layer():
    panel = FeaturePCAPanel(VIT, threaded=False, display_size=64)
    model = panel.context.model()
    x1, x2 = panel.current_pair()
    assert len(panel.method_controls) == 1 and panel.last_error is None
    assert panel.status.value.startswith("feature-pca: red (component 1,")  # says what the colours separate
    torch.testing.assert_close(panel.maps[0], explain_pair(model, "feature-pca", x1, x2, n_components=3)[0][0])
    panel.layer_select.value = "blocks.1"
    expected = explain_pair(model, "feature-pca", x1, x2, layer="blocks.1", n_components=3)
    assert panel.maps[0].shape == (3, 112, 112)
    torch.testing.assert_close(panel.maps[0], expected[0][0])
    torch.testing.assert_close(panel.maps[1], expected[1][0])
    panel.method_controls[0].components.value = 1
    expected = explain_pair(model, "feature-pca", x1, x2, layer="blocks.1", n_components=1)
    torch.testing.assert_close(panel.maps[0], expected[0][0])
