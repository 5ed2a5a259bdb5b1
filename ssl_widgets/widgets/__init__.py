"""ipywidgets panels: the :class:`Explorer` and one small panel per method."""
from .explorer import Explorer
from .panels import (AttentionPanel, AveragedTransformsPanel, CAMPanel, CorrespondencePanel, FeaturePCAPanel,
                     FeatureVisualizationPanel, GradientPanel, ModelDifferencePanel, OcclusionPanel,
                     PairwiseOcclusionPanel, PixelInvariancePanel)

__all__ = ["AttentionPanel", "AveragedTransformsPanel", "CAMPanel", "CorrespondencePanel", "Explorer", "FeaturePCAPanel",
           "FeatureVisualizationPanel", "GradientPanel", "ModelDifferencePanel", "OcclusionPanel", "PairwiseOcclusionPanel",
           "PixelInvariancePanel"]
