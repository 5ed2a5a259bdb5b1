"""One small panel per method, for notebooks that teach a single method."""
from __future__ import annotations

from .controls import (AttentionControls, AveragedTransformsControls, CAMControls, CorrespondenceControls,
                       GradientControls, OcclusionControls, PairwiseControls, PCAControls, PixelInvarianceControls)
from .explorer import Explorer
from .synthesis_panels import FeatureVisualizationControls, ModelDifferenceControls

__all__ = ["OcclusionPanel", "CAMPanel", "AveragedTransformsPanel", "GradientPanel", "PairwiseOcclusionPanel",
           "PixelInvariancePanel", "CorrespondencePanel", "FeatureVisualizationPanel", "ModelDifferencePanel",
           "AttentionPanel", "FeaturePCAPanel"]


class OcclusionPanel(Explorer):
    """Conditional / context-agnostic occlusion only (patch size, stride, fill)."""

    tabs = (OcclusionControls,)


class CAMPanel(Explorer):
    """Grad-CAM and Interaction-CAM only (pooling, gradient interaction, layer)."""

    tabs = (CAMControls,)


class AveragedTransformsPanel(Explorer):
    """Averaged transforms only (transform, steps, guided, noise)."""

    tabs = (AveragedTransformsControls,)


class GradientPanel(Explorer):
    """Input x Gradient and SmoothGrad only."""

    tabs = (GradientControls,)


class PairwiseOcclusionPanel(Explorer):
    """Pairwise occlusion only."""

    tabs = (PairwiseControls,)


class PixelInvariancePanel(Explorer):
    """Pixel invariance only."""

    tabs = (PixelInvarianceControls,)


class FeatureVisualizationPanel(Explorer):
    """Feature visualisation only (layer, score/feature mode, octaves or Fourier image)."""

    tabs = (FeatureVisualizationControls,)


class ModelDifferencePanel(Explorer):
    """Model-difference visualisation only (feature inversion from three depths of two models)."""

    tabs = (ModelDifferenceControls,)


class CorrespondencePanel(Explorer):
    """Click-to-correspond only."""

    tabs = (CorrespondenceControls,)


class AttentionPanel(Explorer):
    """The class token's attention (``cls-attention``) of a Vision Transformer only (block, head or mean of heads).

    Examples:
        >>> from ssl_widgets.widgets import AttentionPanel
        >>> panel = AttentionPanel("tiny-dino-vit", threaded=False, display_size=64)
        >>> panel.status.value, tuple(panel.maps[0].shape)
        ('cls-attention', (112, 112))
    """

    tabs = (AttentionControls,)


class FeaturePCAPanel(Explorer):
    """Patch-feature PCA (``feature-pca``) of both images as RGB only (the layer chosen above).

    Examples:
        >>> from ssl_widgets.widgets import FeaturePCAPanel
        >>> panel = FeaturePCAPanel("tiny-dino-vit", threaded=False, display_size=64)
        >>> panel.status.value.split(":")[0], tuple(panel.maps[0].shape)  # the status says what the colours separate
        ('feature-pca', (3, 112, 112))
    """

    tabs = (PCAControls,)
