"""Images: loading, offline samples, folders and the paper's view transforms."""
from .folder import list_images, load_square, split_holdout
from .images import SAMPLE_IMAGES, load_image, sample_image, to_pil
from .views import PHOTOMETRIC_TRANSFORMS, VIEW_TRANSFORMS, make_pair, make_view, view_transform

__all__ = [
    "PHOTOMETRIC_TRANSFORMS",
    "SAMPLE_IMAGES",
    "VIEW_TRANSFORMS",
    "list_images",
    "load_image",
    "load_square",
    "make_pair",
    "make_view",
    "sample_image",
    "split_holdout",
    "to_pil",
    "view_transform",
]
