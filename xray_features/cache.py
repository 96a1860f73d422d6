"""On-disk feature cache at the extractor boundary.

`CachedExtractor` wraps any feature extractor. A row is stored under a key
made of the input image's bytes and shape and the extractor's class and
output-relevant parameters, so a cached row is reused across folds, heads and
runs, and never across different images or settings.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone

from ._images import as_images

__all__ = ["CachedExtractor", "extractor_digest"]

# Parameters that change speed, never the features.
_RUNTIME_PARAMS = {"n_jobs", "batch_size", "n_threads"}


def extractor_digest(extractor):
    """A short hex digest of the extractor's class and output-relevant params."""
    params = {
        key: value for key, value in extractor.get_params(deep=True).items()
        if key.split("__")[-1] not in _RUNTIME_PARAMS
    }
    text = type(extractor).__qualname__ + repr(sorted(params.items(), key=lambda kv: kv[0]))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class CachedExtractor(TransformerMixin, BaseEstimator):
    """Cache the rows of ``extractor`` in ``cache_dir`` (None: no caching).

    Parameters
    ----------
    extractor : transformer
        A stateless extractor: images -> (n, n_features).
    cache_dir : str or None
        Folder for the cache; rows are ``<cache_dir>/<Name>-<digest>/<key>.npy``.
    """

    def __init__(self, extractor, cache_dir=None):
        self.extractor = extractor
        self.cache_dir = cache_dir

    def fit(self, X, y=None):
        self.extractor_ = clone(self.extractor).fit(X, y)
        return self

    def transform(self, X):
        extractor = getattr(self, "extractor_", self.extractor)
        if self.cache_dir is None:
            return extractor.transform(X)
        images = as_images(X)
        folder = Path(self.cache_dir) / f"{type(extractor).__name__}-{extractor_digest(extractor)}"
        keys = [_image_key(image) for image in images]
        rows = [_load(folder / f"{key}.npy") for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            computed = extractor.transform([images[i] for i in missing])
            folder.mkdir(parents=True, exist_ok=True)
            for i, row in zip(missing, computed):
                rows[i] = np.asarray(row, dtype=np.float32)
                _save_atomic(folder / f"{keys[i]}.npy", rows[i])
        return np.vstack(rows)

    def get_feature_names_out(self, input_features=None):
        extractor = getattr(self, "extractor_", self.extractor)
        return extractor.get_feature_names_out(input_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _image_key(image):
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _load(path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def _save_atomic(path, row):
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, row, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
