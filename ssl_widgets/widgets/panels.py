"""One small panel per method, for notebooks that teach a single method."""
from __future__ import annotations

from .controls import (AveragedTransformsControls, CAMControls, CorrespondenceControls, GradientControls,
                       OcclusionControls, PairwiseControls, PixelInvarianceControls)
from .explorer import Explorer
from .synthesis_panels import FeatureVisualizationControls, ModelDifferenceControls

__all__ = ["OcclusionPanel", "CAMPanel", "AveragedTransformsPanel", "GradientPanel", "PairwiseOcclusionPanel",
           "PixelInvariancePanel", "CorrespondencePanel", "FeatureVisualizationPanel", "ModelDifferencePanel"]


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
