"""Explanation methods for pairwise similarity, Captum style: ``Method(model).attribute(...)``."""
from .attention_relevance import AttentionGradientRelevance
from .attention_rollout import AttentionRollout
from .averaged_transforms import AveragedTransforms
from .bilrp import BiLRP
from .cls_attention import ClassTokenAttention
from .feature_pca import PatchFeaturePCA
from .cam import InteractionCAM, PairGradCAM, cam_variants
from .feature_visualization import FeatureVisualization
from .model_difference import ModelDifference
from .engine import PairAttribution, SimilarityForward, guided_relus, preserved_model_state
from .gradients import PairInputXGradient, PairSmoothGrad
from .joint import JointAttribution
from .joint_gradient import JointGradient
from .joint_occlusion import JointOcclusion
from ._occlusion_engine import CopyEvaluator, ViewEmbeddingStore
from .maps import normalize_map, upsample
from .occlusion import ConditionalOcclusion, ContextAgnosticOcclusion
from .pairwise_occlusion import PairwiseOcclusion
from .pixel_invariance import PixelInvariance
from .registry import JOINT_METHOD_NAMES, METHOD_NAMES, PAIR_METHOD_NAMES, VIT_METHOD_NAMES, get_method

__all__ = [
    "AttentionGradientRelevance",
    "AttentionRollout",
    "AveragedTransforms",
    "BiLRP",
    "ClassTokenAttention",
    "PatchFeaturePCA",
    "VIT_METHOD_NAMES",
    "ConditionalOcclusion",
    "ContextAgnosticOcclusion",
    "CopyEvaluator",
    "FeatureVisualization",
    "ModelDifference",
    "InteractionCAM",
    "JOINT_METHOD_NAMES",
    "JointAttribution",
    "JointGradient",
    "JointOcclusion",
    "METHOD_NAMES",
    "PAIR_METHOD_NAMES",
    "PairAttribution",
    "PairGradCAM",
    "PairInputXGradient",
    "PairSmoothGrad",
    "PairwiseOcclusion",
    "PixelInvariance",
    "SimilarityForward",
    "ViewEmbeddingStore",
    "cam_variants",
    "get_method",
    "guided_relus",
    "normalize_map",
    "preserved_model_state",
    "upsample",
]

# every method record's class, also those of methods added as one module with a SPEC (e.g. PairIntegratedGradients)
from .spec import all_specs as _all_specs  # noqa: E402 - after the explicit exports above

globals().update({_spec.cls.__name__: _spec.cls for _spec in _all_specs()})
__all__ += sorted({_spec.cls.__name__ for _spec in _all_specs()} - set(__all__))
