"""Shared helpers for transformers whose samples are 2-D images."""

from __future__ import annotations

import cv2
import numpy as np
from joblib import Parallel, delayed
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array


def as_images(X):
    """Validate a batch of images and return a list of 2-D float32 arrays.

    ``X`` is a 3-D array ``(n, height, width)`` or a sequence of 2-D arrays.
    A 2-D array is read as ``n`` images of one row each (this is how
    sklearn's generic estimator checks feed a transformer).
    """
    if sparse.issparse(X):
        raise TypeError("sparse input is not supported: expected a batch of dense 2-D images")
    if isinstance(X, (list, tuple)) and X and np.ndim(X[0]) == 2:
        images = list(X)  # a sequence of images, possibly of different shapes
    else:
        X = check_array(X, allow_nd=True, dtype="numeric", ensure_min_features=1,
                        ensure_all_finite=False)
        if X.ndim == 2:
            X = X[:, None, :]
        if X.ndim != 3:
            raise ValueError(f"expected a batch of 2-D images, got an array of shape {X.shape}")
        X = np.ascontiguousarray(X, dtype=np.float32)
        finite = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if not finite.all():
            raise ValueError(f"image {int(np.argmin(finite))} holds NaN or infinity")
        return list(X)  # one validation pass over the whole array
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"image {i} is not 2-D: shape {image.shape}")
        if image.size == 0:
            raise ValueError(f"image {i} is empty: shape {image.shape}")
        if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
            raise ValueError(f"image {i} is not numeric: dtype {image.dtype}")
        image = np.ascontiguousarray(image, dtype=np.float32)
        if not np.isfinite(image).all():
            raise ValueError(f"image {i} holds NaN or infinity")
        out.append(image)
    if not out:
        raise ValueError("empty batch: 0 images")
    return out


def like_input(X, images):
    """``images`` as a list when ``X`` was a list of 2-D images, else a 3-D array."""
    if isinstance(X, (list, tuple)) and np.ndim(X[0]) == 2:
        return images
    return np.stack(images)


def to_uint8(image):
    """[0, 1] float -> uint8, clipping anything outside."""
    scaled = np.clip(image, 0.0, 1.0)
    if scaled.dtype.kind != "f":
        return (scaled * 255.0 + 0.5).astype(np.uint8)
    scaled *= 255.0  # in place: the same arithmetic, without two temporaries
    scaled += 0.5
    return scaled.astype(np.uint8)


def resize_to(image, height, width):
    """Resize with area averaging when shrinking, linear when enlarging."""
    if image.shape == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def crop_border(image, fraction):
    """``image`` without ``fraction`` of its height and width on every side
    (at least one pixel is kept)."""
    height, width = image.shape
    top = min(int(round(height * fraction)), (height - 1) // 2)
    left = min(int(round(width * fraction)), (width - 1) // 2)
    return image[top:height - top, left:width - left]


def map_images(function, images, n_jobs=None):
    """``[function(im) for im in images]``, in parallel when ``n_jobs`` asks for it."""
    if n_jobs in (None, 1) or len(images) < 64:
        return [function(image) for image in images]
    return Parallel(n_jobs=n_jobs, prefer="threads", batch_size=16)(
        delayed(function)(image) for image in images
    )


class ImageTransformerMixin(TransformerMixin, BaseEstimator):
    """Base for stateless transformers over batches of 2-D images."""

    def fit(self, X, y=None):
        """Validate ``X``; nothing is learnt."""
        as_images(X)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class ImageFeatureExtractor(ImageTransformerMixin):
    """Base for extractors: images -> float32 feature matrix ``(n, n_features)``.

    Subclasses define ``_extract(image) -> 1-D float32`` (on an image already
    resized to ``image_size``) and ``_feature_names()``.
    """

    def transform(self, X):
        """(n, n_features) float32 feature rows of the images ``X``."""
        images = as_images(X)
        size = self.image_size
        extract = _Extractor(self, size)
        rows = map_images(extract, images, self.n_jobs)
        return np.vstack(rows).astype(np.float32, copy=False)

    def get_feature_names_out(self, input_features=None):
        """The extractor's feature names, one per column."""
        return np.asarray(self._feature_names(), dtype=object)


class _Extractor:
    """Picklable callable: resize to the extractor's square size, then extract."""

    def __init__(self, extractor, size):
        self.extractor = extractor
        self.size = size

    def __call__(self, image):
        return self.extractor._extract(resize_to(image, self.size, self.size))
