"""xray_features: read, preprocess and describe pediatric chest X-rays.

The library half of xray-hybrid. Every step is a small scikit-learn
transformer; nothing here imports torch.
"""

from .cache import CachedExtractor
from .dataset import DatasetIndex, ImageRecord, index_dataset, make_folds
from .io import ReadImages, XrayReadError, read_xray
from .preprocess import CLAHE, LungCrop, Resize, default_preprocessor
from .texture import HOGFeatures, LBPFeatures

__version__ = "0.1.0"

__all__ = [
    "CachedExtractor", "DatasetIndex", "ImageRecord", "index_dataset", "make_folds",
    "ReadImages", "XrayReadError", "read_xray", "CLAHE", "LungCrop", "Resize",
    "default_preprocessor", "HOGFeatures", "LBPFeatures", "__version__",
]
