"""On-disk feature cache at the extractor boundary.

`CachedExtractor` wraps any feature extractor. A row is stored under a key
made of the input image's bytes and shape and the extractor's class and
output-relevant parameters, so a cached row is reused across folds, heads and
runs, and never across different images or settings.

`FileFeatureCache` keys the same rows by the *file's* sha256 and the
preprocessing's parameters, so a warm batch job skips decoding and
preprocessing too (`pipelines.assemble.extract_features` uses it).

Both keys also hold what else decides the rows: the sha256 of any model file
the extractor reads, the versions of the libraries that compute features, and
the source of this package's feature code. A change to any of them starts new
cache folders, instead of serving rows the current code would not compute.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import cache, cached_property
from importlib import metadata
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone

from ._images import as_images
from .hashing import file_sha256

__all__ = ["CachedExtractor", "FileFeatureCache", "extractor_digest", "feature_environment"]

# Parameters that change speed, never the features.
_RUNTIME_PARAMS = {"n_jobs", "batch_size", "n_threads"}
# The distributions that compute features (decoding, preprocessing, HOG/LBP, the CNN).
FEATURE_LIBRARIES = (("numpy",), ("opencv-python-headless", "opencv-python"),
                     ("scikit-image",), ("onnxruntime",), ("pydicom",))
# This package's modules that read images or compute features.
FEATURE_MODULES = ("_images.py", "io.py", "preprocess.py", "augment.py", "views.py",
                   "texture.py", "cnn.py")


@cache
def feature_environment():
    """The library versions and the digest of the feature code, as one string."""
    versions = []
    for names in FEATURE_LIBRARIES:
        for name in names:
            try:
                versions.append(f"{name}={metadata.version(name)}")
                break
            except metadata.PackageNotFoundError:
                continue
    code = hashlib.blake2b(digest_size=8)
    for module in FEATURE_MODULES:
        code.update((Path(__file__).parent / module).read_bytes())
    return " ".join(versions) + f" code={code.hexdigest()}"


def extractor_digest(extractor, salt=""):
    """A short hex digest of the extractor's class, its output-relevant params,
    the sha256 of any model file it (or a step inside it) reads, and
    `feature_environment`."""
    all_params = extractor.get_params(deep=True)
    params = {key: value for key, value in all_params.items()
              if key.split("__")[-1] not in _RUNTIME_PARAMS}
    models = [obj.model_sha256() for obj in (extractor, *all_params.values())
              if callable(getattr(obj, "model_sha256", None))]
    text = (salt + type(extractor).__qualname__ + repr(sorted(params.items(), key=lambda kv: kv[0]))
            + repr(models) + feature_environment())
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
        """Fit a clone of ``extractor`` (stateless extractors learn nothing)."""
        self.extractor_ = clone(self.extractor).fit(X, y)
        return self

    def transform(self, X):
        """The extractor's rows of ``X``, read from the cache where present."""
        extractor = getattr(self, "extractor_", self.extractor)
        if self.cache_dir is None:
            return extractor.transform(X)
        images = as_images(X)
        folder = _extractor_folder(self.cache_dir, extractor)
        keys = [_image_key(image) for image in images]
        rows = [_load(folder / f"{key}.npy") for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            computed = extractor.transform([images[i] for i in missing])
            for i, row in zip(missing, computed):
                rows[i] = _save_atomic(folder / f"{keys[i]}.npy", row)
        return np.vstack(rows)

    def get_feature_names_out(self, input_features=None):
        """The wrapped extractor's feature names."""
        extractor = getattr(self, "extractor_", self.extractor)
        return extractor.get_feature_names_out(input_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class FileFeatureCache:
    """Feature rows keyed by image file content and preprocessing.

    ``rows(paths)`` returns, per extractor, the cached row of each file or
    None; ``store`` saves new ones. A key is the file's sha256 plus a digest of
    ``preprocessor``'s parameters, ``version`` and `feature_environment`.

    Parameters
    ----------
    cache_dir : str
    preprocessor : transformer
    extractors : dict of name -> extractor
    version : str
    """

    def __init__(self, cache_dir, preprocessor, extractors, version):
        self.cache_dir = cache_dir
        self.preprocessor = preprocessor
        self.extractors = extractors
        self.version = version

    @cached_property
    def _folders(self):
        prep = extractor_digest(self.preprocessor, salt=self.version)
        return {name: _extractor_folder(self.cache_dir, extractor) / f"files-{prep}"
                for name, extractor in self.extractors.items()}

    def file_keys(self, paths):
        """sha256 of each file, or None where it cannot be read (left to the reader)."""
        keys = []
        for path in paths:
            try:
                keys.append(file_sha256(path))
            except OSError:
                keys.append(None)
        return keys

    def rows(self, keys):
        """Each extractor's cached row for each key (None where absent)."""
        return {name: [None if key is None else _load(folder / f"{key}.npy") for key in keys]
                for name, folder in self._folders.items()}

    def store(self, name, keys, rows):
        """Write ``rows`` of extractor ``name`` under ``keys`` (atomic per file)."""
        folder = self._folders[name]
        for key, row in zip(keys, rows):
            if key is not None:
                _save_atomic(folder / f"{key}.npy", row)


def _extractor_folder(cache_dir, extractor):
    return Path(cache_dir) / f"{type(extractor).__name__}-{extractor_digest(extractor)}"


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
    """Write ``row`` as float32 to ``path`` (temp file + rename); return it."""
    row = np.asarray(row, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, row, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return row
