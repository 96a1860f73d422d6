"""The Python API: train what ``pipelines.run`` trains, or load the packaged model.

Two entry points, in the plain style of torchxrayvision and the conventions of
scikit-learn:

- `HybridClassifier`: an estimator whose `~HybridClassifier.fit` builds the
  same training copies (counter-squash and zoom), the same patient-grouped
  folds, calibration and threshold as ``python -m pipelines.run`` does for one
  feature set and head, so the model it fits is the one the figures in docs/results.md
  describe.
- `load_default` (and `load`): the packaged model (or any saved one), ready to
  `~XrayModel.predict_proba` and to give `~XrayModel.features` (embeddings).

Example
-------
>>> from pipelines.api import HybridClassifier, load, load_default
>>> clf = HybridClassifier(features="hog", head="logreg")        # doctest: +SKIP
>>> clf.fit(paths, labels, groups=patients)                     # doctest: +SKIP
>>> clf.predict(["film.jpeg"])                                  # doctest: +SKIP
array(['PNEUMONIA'], dtype='<U9')
>>> clf.save("my_model.joblib")                                 # doctest: +SKIP
>>> load("my_model.joblib").predict_proba(["film.jpeg"])        # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from xray_features.cnn import MODELS_DIR, OnnxCNNScore, OnnxEmbedder
from xray_features.dataset import make_folds
from xray_features.preprocess import default_preprocessor

from .assemble import (DEFAULT_AUGMENT, extract_features, extract_training_copies,
                       make_extractor, make_head, parse_feature_sets)
from .metrics import DEFAULT_THRESHOLD_RULE, binary_metrics
from .multiclass import is_multiclass, three_class_refusal
from .persist import load_model, save_model

__all__ = ["HybridClassifier", "XrayModel", "load", "load_default", "CLASS_NAMES",
           "DEFAULT_MODEL_PATH"]

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
DEFAULT_MODEL_PATH = MODELS_DIR / "default_pipeline.joblib"


class _ImageModelMixin:
    """`predict_proba`, `predict` and `features` over a fitted pipeline
    ``read -> preprocess -> features -> classifier`` (``self._pipeline()``),
    on file paths or on image arrays."""

    def predict_proba(self, X):
        """P(class) of each image.

        Parameters
        ----------
        X : list of paths, or of 2-D / 3-D image arrays, or an array (n, h, w)
            Arrays: grayscale (h, w) or colour (h, w, 3|4); integers are scaled
            by their type's maximum, floats are taken as in [0, 1].

        Returns
        -------
        ndarray of shape (n, 2)
            Columns in the order of ``classes_`` (NORMAL, PNEUMONIA).
        """
        steps, X = self._steps_for(X)
        return steps.predict_proba(X)

    def predict(self, X):
        """The class name of each image, at the model's threshold."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)]

    def _steps_for(self, X):
        pipeline = self._pipeline()
        if _are_paths(X):
            return pipeline, [os.fspath(p) for p in X]
        return Pipeline(pipeline.steps[1:]), [_as_image(a) for a in X]

    def feature_names_out(self):
        """The names of the columns `features` returns (``hog_0``, ``cnn_12``...)."""
        features = self._pipeline().named_steps["features"]
        if self._cnn_score() is not None:
            width = self._network_embedder().n_features()
            return np.asarray([f"embedding_{i}" for i in range(width)], dtype=object)
        return features.get_feature_names_out()

    def _cnn_score(self):
        """The `OnnxCNNScore` of a fine-tuned CNN model, else None."""
        features = self._pipeline().named_steps["features"]
        return next((t for _, t in getattr(features, "transformer_list", [])
                     if isinstance(t, OnnxCNNScore)), None)

    def _features(self, X):
        """Embeddings of each image: for a CNN model, the network's 1,280-d
        penultimate layer (its ``embedding`` output); for a feature-set model,
        the feature vector its head sees (HOG, LBP and/or CNN embedding).

        Returns
        -------
        ndarray of shape (n, n_features), float32
        """
        score = self._cnn_score()
        if score is None:
            steps, X = self._steps_for(X)
            return Pipeline(steps.steps[:-1]).transform(X)
        return self._network_embedder().transform(self._preprocessed(X))

    def _network_embedder(self):
        """The fine-tuned network's ``embedding`` output as an `OnnxEmbedder`, at
        the network's own input size; a clear error when it has none."""
        score = self._cnn_score()
        embedder = OnnxEmbedder(model_path=score.model_path, image_size=score.image_size,
                                batch_size=score.batch_size, n_threads=score.n_threads,
                                expected_sha256=score.expected_sha256, output_name="embedding")
        outputs = [o.name for o in embedder._get_session().get_outputs()]
        if "embedding" not in outputs:
            raise ValueError(f"{score.model_path}: this network has no 'embedding' output "
                             f"(outputs: {outputs}); features() needs one")
        return embedder

    def _preprocessed(self, X):
        steps, X = self._steps_for(X)
        return Pipeline(steps.steps[:-2]).transform(X)


class HybridClassifier(_ImageModelMixin, ClassifierMixin, BaseEstimator):
    """Train the model ``python -m pipelines.run`` trains, from Python.

    ``read -> CLAHE [-> LungCrop] -> Resize -> features -> head``, with the
    head's probability Platt-calibrated and thresholded from out-of-fold
    predictions (`pipelines.decision.DecisionClassifier`). `fit` adds the
    training copies of each image (``augment``) to the training part of every
    fold that holds the image, as ``pipelines.run`` does; the same arguments
    give the same out-of-fold probabilities, threshold and final model as
    ``python -m pipelines.run --features F --heads H --cv K --seed S``.

    Parameters
    ----------
    features : str, default="hog+cnn"
        One feature set: ``"+"``-joined extractors from hog, lbp, cnn, cnn160, cnn_int8.
    head : {"logreg", "xgb"}, default="logreg"
        ``"xgb"`` needs the ``xgb`` extra (XGBoost).
    augment : {"counter-squash+zoom", "counter-squash", "none"}, default="counter-squash+zoom"
        Training copies of each image (docs/design.md).
    cv : int, list of (train, test) index pairs, or a splitter, default=5
        An int gives `xray_features.dataset.make_folds` (patient-grouped,
        label-stratified, seeded by ``random_state``), the folds of
        ``pipelines.run``. A splitter's ``split(X, y, groups)`` is called.
    threshold_rule : str, default="sensitivity:0.95"
        ``"sensitivity:T"``, ``"youden"`` or a number (docs/results.md, *The operating point*).
    lung_crop : bool, default=False
        Add `LungCrop` to the preprocessing.
    class_names : tuple of two str, default=("NORMAL", "PNEUMONIA")
        The names of label 0 and 1; ``classes_`` and `predict` use them.
    random_state : int, default=0
        Seeds the folds, the head and the zoom copies (``pipelines.run --seed``).
    cache_dir : str or None, default=None
        Feature cache folder (``pipelines.run``'s default is
        ``~/.cache/xray-hybrid``); None computes every feature.
    n_jobs : int or None, default=None
        Threads for feature extraction and the fold fits.
    progress : bool, default=False
        Progress bars while features are extracted.

    Attributes
    ----------
    classes_ : ndarray of str
        ``class_names``.
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted model, paths in, as ``pipelines.run`` saves it.
    folds_ : list of (train, test) index arrays
    oof_proba_ : ndarray
        Calibrated out-of-fold P(``class_names[1]``), in training order.
    threshold_ : float
    cv_metrics_ : dict
        AUC, accuracy, sensitivity, specificity, F1 and Brier of ``oof_proba_``
        at ``threshold_`` (as ``metrics.json``'s ``cv``, without the CIs).
    n_features_in_ : int
        Width of the feature vector the head sees.

    Examples
    --------
    >>> clf = HybridClassifier(features="hog", head="logreg", cv=3)     # doctest: +SKIP
    >>> clf.fit(paths, ["NORMAL", "PNEUMONIA", ...], groups=patient_ids)  # doctest: +SKIP
    >>> clf.predict_proba(["film.jpeg"])[:, 1]                          # doctest: +SKIP
    >>> clf.save("model.joblib")  # scorable by `xray-hybrid score --model`  # doctest: +SKIP
    """

    def __init__(self, features="hog+cnn", head="logreg", augment=DEFAULT_AUGMENT, cv=5,
                 threshold_rule=DEFAULT_THRESHOLD_RULE, lung_crop=False,
                 class_names=CLASS_NAMES, random_state=0, cache_dir=None, n_jobs=None,
                 progress=False):
        self.features = features
        self.head = head
        self.augment = augment
        self.cv = cv
        self.threshold_rule = threshold_rule
        self.lung_crop = lung_crop
        self.class_names = class_names
        self.random_state = random_state
        self.cache_dir = cache_dir
        self.n_jobs = n_jobs
        self.progress = progress

    def fit(self, X, y, groups=None):
        """Fit on images ``X`` (paths or arrays) with labels ``y``.

        Parameters
        ----------
        X : list of paths or image arrays
        y : array-like of class names (``class_names``) or of 0/1
        groups : array-like, optional
            The patient of each image. Several films of one patient must stay in
            one fold, or the CV figures, calibration and threshold are optimistic;
            without ``groups`` every image is its own patient, with a warning.

        Returns
        -------
        self
        """
        from .comparison import final_pipeline, fit_decision, training_augment

        sets = parse_feature_sets(self.features)
        if len(sets) != 1:
            raise ValueError(f"features must be one feature set, got {self.features!r}")
        feature_set = sets[0]
        names = feature_set.split("+")
        head = make_head(self.head, self.random_state)
        X = list(X)
        y01 = self._encode(y)
        if len(X) != len(y01):
            raise ValueError(f"X has {len(X)} images but y has {len(y01)} labels")
        self.folds_ = self._folds(y01, groups)
        preprocessor = default_preprocessor(crop=self.lung_crop)
        options = {"n_jobs": self.n_jobs, "progress": self.progress}
        if _are_paths(X):
            X, extract = [os.fspath(p) for p in X], extract_features
        else:
            X, extract = [_as_image(a) for a in X], _extract_arrays
        features = extract(X, names, self.cache_dir, preprocessor=preprocessor, **options)
        copies = extract_training_copies(self.augment, X, y01, names, self.cache_dir,
                                         random_state=self.random_state,
                                         preprocessor=preprocessor, extract=extract, **options)
        matrix = np.hstack([features[name] for name in names])
        clf = fit_decision(head, self.folds_, matrix, y01,
                           training_augment(feature_set, copies, y01), None,
                           n_jobs=self.n_jobs).rethreshold(y01, self.threshold_rule)
        self.pipeline_ = final_pipeline(feature_set, clf, preprocessor, self.n_jobs)
        self.classes_ = np.asarray(self.class_names)
        self.oof_proba_ = clf.oof_proba_
        self.threshold_ = float(clf.threshold_)
        self.cv_metrics_ = binary_metrics(y01, clf.oof_proba_, clf.threshold_)
        self.n_features_in_ = matrix.shape[1]
        self.n_training_images_ = len(y01)
        return self

    def _encode(self, y):
        y = np.asarray(y)
        names = list(self.class_names)
        if len(names) != 2:
            raise ValueError(f"class_names must name two classes, got {self.class_names!r}")
        if y.dtype.kind in "biu" or (y.dtype.kind == "f" and np.isin(y, [0, 1]).all()):
            if not np.isin(y, [0, 1]).all():
                raise ValueError(f"integer labels must be 0 ({names[0]}) or 1 ({names[1]}); "
                                 f"got {sorted(set(y.tolist()) - {0, 1})[:5]}")
            return y.astype(int)
        unknown = sorted(set(map(str, y)) - set(names))
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown[:5]}: labels must be one of "
                             f"{names} or 0/1 (set class_names= for other names)")
        return np.array([names.index(str(v)) for v in y], dtype=int)

    def _folds(self, y, groups):
        if groups is None:
            if not isinstance(self.cv, (list, tuple)):
                warnings.warn("fit() got no groups: the folds treat every image as its own "
                              "patient, so films of one patient can fall on both sides of a "
                              "fold and the CV figures, calibration and threshold come out "
                              "optimistic. Pass groups=<patient id of each image>.",
                              UserWarning, stacklevel=3)
            groups = np.arange(len(y))
        groups = np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries but y has {len(y)}")
        if isinstance(self.cv, (int, np.integer)):
            return make_folds(y, groups, n_splits=int(self.cv), seed=self.random_state)
        if isinstance(self.cv, (list, tuple)):
            return [(np.asarray(a), np.asarray(b)) for a, b in self.cv]
        return [(np.asarray(a), np.asarray(b))
                for a, b in self.cv.split(np.zeros((len(y), 1)), y, groups)]

    def _pipeline(self):
        check_is_fitted(self, "pipeline_")
        return self.pipeline_

    def features_of(self, X):
        """The feature vectors the head sees, (n, ``n_features_in_``) (the
        method is not called ``features``: that is the feature-set parameter)."""
        return self._features(X)

    def save(self, path):
        """Save the fitted pipeline in the project's model format (``.joblib``
        with a ``.sha256`` sidecar and metadata), scorable by
        ``xray-hybrid score --model PATH`` and loadable by `load`."""
        check_is_fitted(self, "pipeline_")
        sets = parse_feature_sets(self.features)
        metadata = {"feature_set": sets[0], "head": self.head, "threshold": self.threshold_,
                    "threshold_rule": self.threshold_rule,
                    "cv": {k: v for k, v in self.cv_metrics_.items()},
                    "n_training_images": self.n_training_images_, "seed": self.random_state,
                    "lung_crop": self.lung_crop, "augment": self.augment, "tta": False,
                    "class_names": list(self.classes_), "made_by": "pipelines.api.HybridClassifier"}
        return save_model(self.pipeline_, path, metadata)


class XrayModel(_ImageModelMixin):
    """A fitted, saved model: the packaged default (`load_default`) or any
    ``.joblib`` that ``pipelines.run`` or `HybridClassifier.save` wrote (`load`).

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        ``read -> preprocess -> features -> classifier``, fitted.
    metadata : dict
        What the model file records (feature set, head, threshold, CV figures...).

    Attributes
    ----------
    classes_ : ndarray of str
        ``["NORMAL", "PNEUMONIA"]``.
    threshold_ : float
    pipeline : the wrapped pipeline
    metadata : dict

    Examples
    --------
    >>> from pipelines.api import load_default
    >>> model = load_default()                                  # doctest: +SKIP
    >>> model.predict(["film.jpeg"])                            # doctest: +SKIP
    array(['NORMAL'], dtype='<U9')
    >>> model.features(["film.jpeg"]).shape                     # doctest: +SKIP
    (1, 1280)
    """

    def __init__(self, pipeline, metadata=None):
        self.pipeline = pipeline
        self.metadata = dict(metadata or {})
        self.classes_ = np.asarray(self.metadata.get("class_names", CLASS_NAMES))
        self.threshold_ = float(pipeline.steps[-1][1].threshold_)

    def _pipeline(self):
        return self.pipeline

    @property
    def outputs(self):
        """The names of `predict_proba`'s columns (torchxrayvision's ``pathologies``)."""
        return list(self.classes_)

    features = _ImageModelMixin._features

    def __repr__(self):
        m = self.metadata
        return (f"XrayModel({m.get('feature_set')}/{m.get('head')}, threshold "
                f"{self.threshold_:.3f}, outputs={self.outputs})")


def load(path):
    """Load a saved ``.joblib`` model (checked against its ``.sha256`` sidecar
    and the library versions first) as an `XrayModel`. Pickles run code: load
    only files from sources you trust."""
    pipeline, metadata = load_model(path)
    if not hasattr(pipeline, "named_steps") or "features" not in pipeline.named_steps:
        raise ValueError(f"{path}: not a read -> preprocess -> features -> classifier pipeline")
    if is_multiclass(pipeline):
        raise ValueError(f"{path}: {three_class_refusal('pipelines.api.load')}")
    return XrayModel(pipeline, metadata)


def load_default():
    """The packaged model (``xray_features/models/default_pipeline.joblib``, see
    its model card): the fine-tuned EfficientNet-Lite0, calibrated, at its
    ``sensitivity:0.95`` threshold.

    Example
    -------
    >>> model = load_default()                                  # doctest: +SKIP
    >>> model.predict_proba(["film.jpeg"])                      # doctest: +SKIP
    """
    return load(DEFAULT_MODEL_PATH)


def _are_paths(X):
    """True for a list of paths (str / PathLike), False for image arrays."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        return False
    items = list(X)
    if not items:
        raise ValueError("no images given")
    kinds = {isinstance(x, (str, bytes, os.PathLike)) for x in items}
    if len(kinds) > 1:
        raise ValueError("give either file paths or image arrays, not a mix")
    return kinds.pop()


def _as_image(array):
    """An image array as `read_xray` returns one: 2-D float32 in [0, 1]."""
    image = np.asarray(array)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        scale = np.iinfo(image.dtype).max if image.dtype.kind in "iu" else 1.0
        rgb = image[..., :3].astype(np.float32) / scale
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"an image must be (h, w) or (h, w, 3|4); got shape {image.shape}")
    if image.dtype.kind in "iu":
        image = image.astype(np.float32) / np.iinfo(image.dtype).max
    elif image.dtype.kind == "b":
        image = image.astype(np.float32)
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError("float images must be finite and in [0, 1]")
    return image


def _extract_arrays(images, extractor_names, cache_dir=None, preprocessor=None, n_jobs=None,
                    progress=False, **_):
    """`extract_features` for images already in memory (no file cache)."""
    from xray_features import CachedExtractor

    preprocess = preprocessor if preprocessor is not None else default_preprocessor()
    prepared = preprocess.transform(list(images))
    return {name: CachedExtractor(make_extractor(name, n_jobs), cache_dir)
            .transform(prepared).astype(np.float32, copy=False) for name in extractor_names}


