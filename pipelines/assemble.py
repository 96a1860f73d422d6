"""Assemble xray_features steps into sklearn pipelines.

A model is ``read -> preprocess -> FeatureUnion(extractors) -> DecisionClassifier(head)``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from xray_features import CachedExtractor, HOGFeatures, LBPFeatures, ReadImages, __version__
from xray_features.augment import RandomZoom, counter_squash
from xray_features.cache import FileFeatureCache
from xray_features.cnn import (INT8_EMBEDDER, OnnxCNNScore, OnnxEmbedder, portable_model_path,
                               resolve_model_path)
from xray_features.preprocess import default_preprocessor
from xray_features.views import ViewFeatures, view_preprocessor

from .decision import DecisionClassifier, ScoreHead
from .metrics import DEFAULT_THRESHOLD_RULE

__all__ = ["EXTRACTORS", "HEADS", "parse_feature_sets", "make_extractor", "make_head",
           "make_feature_union", "make_pipeline", "extract_features",
           "extract_counter_squash_features", "extract_zoom_features", "extract_training_copies",
           "AUGMENTATIONS", "DEFAULT_AUGMENT", "extract_preprocessed", "cnn_preprocessor",
           "make_cnn_pipeline", "with_network"]

# cnn160: the same embedder at 160 px; cnn_int8: the same embedder in static int8
# (docs/performance.md).
EXTRACTORS = ("hog", "lbp", "cnn", "cnn160", "cnn_int8")
HEADS = ("xgb", "logreg")
# training copies per image: each is made once, cached, and joins only training folds
AUGMENTATIONS = {"counter-squash+zoom": ("counter-squash", "zoom"),
                 "counter-squash": ("counter-squash",), "none": ()}
DEFAULT_AUGMENT = "counter-squash+zoom"  # pipelines.run's default, the packaged model's
ZOOM = 0.1  # RandomZoom's max_fraction for the zoom copies


def parse_feature_sets(text):
    """``"hog,cnn,hog+cnn"`` -> ``["hog", "cnn", "hog+cnn"]`` (canonical order within a set)."""
    sets = []
    for item in str(text).split(","):
        names = [name.strip().lower() for name in item.split("+") if name.strip()]
        unknown = sorted(set(names) - set(EXTRACTORS))
        if not names or unknown:
            raise ValueError(f"unknown feature extractor(s) {unknown or item!r}: "
                             f"choose '+'-joined names from {', '.join(EXTRACTORS)}")
        canonical = "+".join(name for name in EXTRACTORS if name in names)
        if canonical not in sets:
            sets.append(canonical)
    return sets


def make_extractor(name, n_jobs=None):
    """The extractor named ``name`` (one of `EXTRACTORS`), unfitted.

    ``"hog"`` and ``"lbp"``: `HOGFeatures` / `LBPFeatures` at their defaults,
    over ``n_jobs`` threads; ``"cnn"``: the packaged `OnnxEmbedder` at 224 px;
    ``"cnn160"``: the same embedder at 160 px; ``"cnn_int8"``: the same
    embedder in static int8 (about 2x faster; docs/performance.md).
    """
    if name == "hog":
        return HOGFeatures(n_jobs=n_jobs)
    if name == "lbp":
        return LBPFeatures(n_jobs=n_jobs)
    if name == "cnn":
        return OnnxEmbedder()
    if name == "cnn160":
        return OnnxEmbedder(image_size=160)
    if name == "cnn_int8":
        return OnnxEmbedder(model_path=INT8_EMBEDDER)
    raise ValueError(f"unknown extractor {name!r}")


def make_head(name, random_state=0, n_jobs=None):
    """``"logreg"``: scaling + L2 logistic regression; ``"xgb"``: gradient-boosted trees."""
    if name == "logreg":
        return Pipeline([
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=0.01, max_iter=3000, random_state=random_state)),
        ])
    if name == "xgb":
        from xgboost import XGBClassifier

        return XGBClassifier(
            n_estimators=100, max_depth=3, learning_rate=0.2, subsample=0.8,
            colsample_bytree=0.2, tree_method="hist", max_bin=16, n_jobs=n_jobs or 1,
            random_state=random_state, eval_metric="logloss",
        )
    raise ValueError(f"unknown head {name!r}: choose from {', '.join(HEADS)}")


def make_feature_union(feature_set, cache_dir=None, n_jobs=None):
    """A `FeatureUnion` of the extractors of ``feature_set`` (``"hog+cnn"``),
    each wrapped in a `CachedExtractor` (no cache when ``cache_dir`` is None)."""
    names = feature_set.split("+")
    return FeatureUnion([
        (name, CachedExtractor(make_extractor(name, n_jobs), cache_dir)) for name in names
    ])


def make_pipeline(feature_set, head="logreg", cv=5, random_state=0, cache_dir=None, n_jobs=None,
                  threshold_rule=DEFAULT_THRESHOLD_RULE, lung_crop=False, classifier=None,
                  preprocessor=None, views=()):
    """The whole model, from file paths to a thresholded label: the one builder
    of feature-set pipelines (`pipelines.run` saves what it returns).

    ``read -> preprocess -> FeatureUnion(extractors of feature_set) ->
    classifier``; with test-time ``views``, the preprocess and feature steps
    become one `ViewFeatures` step (the chain on the image and on each view).

    Parameters
    ----------
    feature_set : str
        ``"+"``-joined extractor names, e.g. ``"hog+cnn"`` (`EXTRACTORS`).
    head : str, default="logreg"
        `make_head`'s name; unused when ``classifier`` is given.
    cv, random_state, threshold_rule :
        The `DecisionClassifier` built when ``classifier`` is None.
    cache_dir : str, optional
        Feature cache of the extractors (`CachedExtractor`).
    n_jobs : int, optional
        Threads for the extractors and the fold fits.
    lung_crop : bool, default=False
        `default_preprocessor`'s LungCrop; unused when ``preprocessor`` is given.
    classifier : DecisionClassifier, optional
        A (fitted) classifier step to use as it is.
    preprocessor : transformer, optional
        The preprocessing chain (cloned); default `default_preprocessor`.
    views : sequence of transformers, default=()
        Test-time views (`xray_features.views.zoom_views`).
    """
    preprocess = (clone(preprocessor) if preprocessor is not None
                  else default_preprocessor(crop=lung_crop))
    if classifier is None:
        classifier = DecisionClassifier(make_head(head, random_state), cv=cv,
                                        threshold_rule=threshold_rule, n_jobs=n_jobs)
    features = make_feature_union(feature_set, cache_dir, n_jobs)
    if views:
        return Pipeline([("read", ReadImages()),
                         ("features", ViewFeatures(preprocess, features, list(views))),
                         ("classifier", classifier)])
    return Pipeline([("read", ReadImages()), ("preprocess", preprocess), ("features", features),
                     ("classifier", classifier)])


def cnn_preprocessor(model_path):
    """The `default_preprocessor` a CNN's training images went through, as its
    ``<name>.preprocess.json`` sidecar states (``lung_crop``, ``resize_mode``).

    ``model_path`` is a path, or the bare file name of a packaged CNN.
    """
    spec = _preprocess_spec(model_path)
    return default_preprocessor(crop=spec["lung_crop"], resize_mode=spec["resize_mode"])


def _preprocess_spec(model_path):
    sidecar = resolve_model_path(model_path).with_suffix(".preprocess.json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} missing: a CNN must state how its training images "
                                "were preprocessed (lung_crop, resize_mode)")
    spec = json.loads(sidecar.read_text())
    return {"lung_crop": spec["lung_crop"], "resize_mode": spec["resize_mode"]}


def make_cnn_pipeline(model_path, threshold_rule=DEFAULT_THRESHOLD_RULE):
    """A pure-CNN model, from file paths to a thresholded label, unfitted.

    ``read -> the CNN's own preprocessing (`cnn_preprocessor`) ->
    OnnxCNNScore -> DecisionClassifier(ScoreHead(), cv="given")``: the
    network was trained elsewhere, so its classifier step is fitted from the
    network's out-of-fold probabilities (``fit(..., classifier__oof_proba=...)``,
    or `DecisionClassifier.fit` directly), which give the Platt calibration and
    the threshold. Same steps, so the same scoring, recalibration and export,
    as `make_pipeline`.
    """
    return Pipeline([
        ("read", ReadImages()),
        ("preprocess", cnn_preprocessor(model_path)),
        ("features", FeatureUnion([("cnn_score",
                                    OnnxCNNScore(model_path=portable_model_path(model_path)))])),
        ("classifier", DecisionClassifier(ScoreHead(), cv="given",
                                          threshold_rule=threshold_rule)),
    ])


def with_network(model, model_path):
    """A copy of the fitted pure-CNN pipeline ``model`` (`make_cnn_pipeline`)
    that scores with the network file ``model_path`` instead, keeping its
    calibration and threshold: for a network's static int8 version
    (``experiments/quantize_cnn.py``), whose outputs differ from the fp32
    network's by rounding only.

    Raises ValueError unless ``model`` has a single `OnnxCNNScore` feature
    step and ``model_path`` states the same preprocessing as that step's network.
    """
    model = copy.deepcopy(model)
    union = model.named_steps.get("features")
    steps = union.transformer_list if isinstance(union, FeatureUnion) else []
    if len(steps) != 1 or not isinstance(steps[0][1], OnnxCNNScore):
        raise ValueError("with_network needs a pure-CNN pipeline (make_cnn_pipeline)")
    if _preprocess_spec(model_path) != _preprocess_spec(steps[0][1].model_path):
        raise ValueError(f"{model_path} states another preprocessing than "
                         f"{steps[0][1].model_path}")
    steps[0][1].set_params(model_path=portable_model_path(model_path), expected_sha256=None)
    return model


def extract_features(paths, extractor_names, cache_dir=None, batch_size=128, n_jobs=None,
                     progress=True, preprocessor=None, extractors=None):
    """Read and preprocess every image once; run each extractor on the result.

    Returns ``{name: float32 array (n, n_features)}``. The extractors are the
    same objects `make_pipeline` uses, so the features match it exactly.
    With ``cache_dir``, rows are looked up first by file content and
    preprocessing (`FileFeatureCache`), so a warm run neither decodes nor
    preprocesses. ``preprocessor`` and ``extractors`` (``{name: extractor}``)
    override the defaults, for studies.
    """
    reader = ReadImages()
    preprocess = preprocessor if preprocessor is not None else default_preprocessor()
    extractors = extractors or {}
    extractors = {name: extractors.get(name) or make_extractor(name, n_jobs)
                  for name in extractor_names}
    paths = list(paths)
    if cache_dir is None:
        keys, rows = [None] * len(paths), {name: [None] * len(paths) for name in extractors}
    else:
        files = FileFeatureCache(cache_dir, preprocess, extractors, __version__)
        keys = files.file_keys(paths)
        rows = files.rows(keys)
    todo = [i for i in range(len(paths)) if any(rows[name][i] is None for name in extractors)]
    cached = {name: CachedExtractor(extractor, cache_dir) for name, extractor in extractors.items()}
    bar = tqdm(total=len(todo), desc="features", unit="img", disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        images = preprocess.transform(reader.transform([paths[i] for i in batch]))
        for name, extractor in cached.items():
            computed = extractor.transform(images)
            for i, row in zip(batch, computed):
                rows[name][i] = row
            if cache_dir is not None:
                files.store(name, [keys[i] for i in batch], computed)
        bar.update(len(batch))
    bar.close()
    return {name: np.vstack(parts).astype(np.float32, copy=False) for name, parts in rows.items()}


def extract_counter_squash_features(paths, labels, extractor_names, cache_dir=None,
                                    preprocessor=None, extract=None, **kwargs):
    """Features of each image's `counter_squash` copy (read -> stretch ->
    preprocess -> extract), in input order; cached like any features.
    ``extract`` replaces `extract_features` (e.g. its Dask version)."""
    extract = extract or extract_features
    preprocess = preprocessor if preprocessor is not None else default_preprocessor()
    labels = np.asarray(labels)
    paths = list(paths)
    parts = {}
    for label in (0, 1):
        index = np.flatnonzero(labels == label)
        if len(index):
            stretched = Pipeline([("stretch", counter_squash(label)),
                                  ("preprocess", clone(preprocess))])
            parts[label] = (index, extract([paths[i] for i in index], extractor_names,
                                           cache_dir, preprocessor=stretched, **kwargs))
    out = {}
    for name in extractor_names:
        first = next(iter(parts.values()))[1][name]
        out[name] = np.empty((len(paths), first.shape[1]), dtype=np.float32)
        for index, features in parts.values():
            out[name][index] = features[name]
    return out


def extract_zoom_features(paths, extractor_names, cache_dir=None, preprocessor=None,
                          extract=None, max_fraction=ZOOM, random_state=0, **kwargs):
    """Features of each image's zoom copy (read -> `RandomZoom` -> preprocess ->
    extract), in input order; cached like any features."""
    extract = extract or extract_features
    preprocess = preprocessor if preprocessor is not None else default_preprocessor()
    zoomed = view_preprocessor(RandomZoom(max_fraction, random_state), preprocess)
    return extract(list(paths), extractor_names, cache_dir, preprocessor=zoomed, **kwargs)


def extract_training_copies(augment, paths, labels, extractor_names, cache_dir=None,
                            random_state=0, **kwargs):
    """The copy sets of an `AUGMENTATIONS` choice: a list of ``{name: features}``,
    each with one row per image of ``paths``; ``random_state`` seeds the zooms."""
    makers = {"counter-squash": lambda: extract_counter_squash_features(
                  paths, labels, extractor_names, cache_dir, **kwargs),
              "zoom": lambda: extract_zoom_features(paths, extractor_names, cache_dir,
                                                    random_state=random_state, **kwargs)}
    return [makers[kind]() for kind in AUGMENTATIONS[augment]]


def extract_preprocessed(paths, preprocessor=None):
    """The shared preprocessed images ``(n, 224, 224)`` of ``paths``."""
    preprocess = preprocessor if preprocessor is not None else default_preprocessor()
    return preprocess.transform(ReadImages().transform(list(paths)))
