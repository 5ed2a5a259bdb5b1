"""ipywidgets panels: the :class:`Explorer` and one small panel per method."""
from .explorer import Explorer
from .panels import (AveragedTransformsPanel, CAMPanel, CorrespondencePanel, FeatureVisualizationPanel, GradientPanel,
                     ModelDifferencePanel, OcclusionPanel, PairwiseOcclusionPanel, PixelInvariancePanel)

__all__ = ["AveragedTransformsPanel", "CAMPanel", "CorrespondencePanel", "Explorer", "FeatureVisualizationPanel",
           "GradientPanel", "ModelDifferencePanel", "OcclusionPanel", "PairwiseOcclusionPanel", "PixelInvariancePanel"]
