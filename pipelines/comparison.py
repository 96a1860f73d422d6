"""The comparison's building blocks, shared by `pipelines.run` (NORMAL vs
PNEUMONIA), `pipelines.subtype` (three classes) and `pipelines.api`: training
data, folds' fits and their cache, the models compared, the selection rule and
the saved pipelines. The CLIs only parse arguments and call these.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from joblib import Memory

from xray_features.cnn import MODELS_DIR
from xray_features.dataset import index_dataset, make_folds

from .assemble import make_pipeline
from .decision import DecisionClassifier
from .selection import (RELIANCE_MARGIN, feature_passes, native_aspect_ratios, select_model,
                        shortcut_reliance)

__all__ = ["PROBE", "SELECTION_RULE", "default_data_dir", "default_cache_dir", "fit_decision",
           "cached_fit", "model_specs", "library_versions", "load_training_index",
           "model_metadata", "manifest_hash", "choose", "training_augment", "stack_views",
           "final_pipeline"]


PROBE = "baseline/cnn-probe"


def default_data_dir():
    """``$XRAY_DATA``, else ``./data/chest_xray``."""
    return os.environ.get("XRAY_DATA") or "./data/chest_xray"


def default_cache_dir():
    """``$XDG_CACHE_HOME/xray-hybrid``, else ``~/.cache/xray-hybrid``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xray-hybrid")


def fit_decision(head, folds, X, y, augment, versions, n_jobs=None, n_views=1):
    """`DecisionClassifier` over the unfitted estimator ``head``, fitted on
    ``X, y`` (and ``augment``; ``X`` holds ``n_views`` blocks of view features),
    with the default threshold rule (the caller re-chooses the threshold).

    A plain function so that `joblib.Memory` can cache it: a rerun with the
    same head (and its parameters), features, labels, folds and settings loads
    the fitted models instead of refitting them, whatever its threshold rule.
    ``versions`` (package and library versions) is only part of the cache key;
    ``n_jobs`` is not.
    """
    clf = DecisionClassifier(head, cv=folds, n_jobs=n_jobs, n_views=n_views)
    return clf.fit(X, y, **augment)


def cached_fit(function, cache_dir):
    """``function`` behind `joblib.Memory` under ``<cache_dir>/fits`` (its
    ``n_jobs`` left out of the key), or as it is when ``cache_dir`` is None."""
    if cache_dir is None:
        return function
    return Memory(os.path.join(cache_dir, "fits"), verbose=0).cache(function, ignore=["n_jobs"])


def model_specs(feature_sets, heads):
    """``(name, feature set, head)`` of every model a comparison fits: each
    feature set with each head, then the pure-CNN probe."""
    return [(f"{fs}/{head}", fs, head) for fs in feature_sets for head in heads] + [
        (PROBE, "cnn", "logreg")]


def library_versions():
    """What a cached fit depends on besides its arguments: library versions and
    the source of the modules that fit (`decision`) and threshold (`metrics`)."""
    import inspect

    import sklearn

    from xray_features import __version__

    from . import decision, metrics
    try:  # the xgb extra: a run with logistic heads only does without it
        import xgboost
    except ImportError:
        xgboost = None
    code = "".join(inspect.getsource(module) for module in (decision, metrics))
    return {"xray_features": __version__, "sklearn": sklearn.__version__,
            "xgboost": getattr(xgboost, "__version__", None), "numpy": np.__version__,
            "fit_code_sha256": hashlib.sha256(code.encode()).hexdigest()}


def load_training_index(data_dir, limit=None, seed=0):
    """The training images of ``data_dir`` (its ``train/`` split when there is one), or a
    patient-grouped, label-stratified subsample of about ``limit`` of them."""
    index = index_dataset(data_dir)
    if "train" in index.splits:
        index = index.subset("train")
    if limit and limit < len(index):
        n_splits = max(2, round(len(index) / limit))
        _, keep = make_folds(index.labels, index.groups, n_splits=n_splits, seed=seed)[0]
        index = index.take(keep)
    return index


def model_metadata(feature_set, head, classifier, args, result, train, **overrides):
    """What a saved model records of how it was made (``pipelines.score`` and
    the model card read it); ``overrides`` replace the run's settings."""
    return {"feature_set": feature_set, "head": head, "threshold": classifier.threshold_,
            "threshold_rule": args.threshold_rule, "cv": result["cv"],
            "training_manifest_sha256": manifest_hash(train),
            "n_training_images": len(train), "seed": args.seed,
            "lung_crop": args.lung_crop, "augment": args.augment, "tta": args.tta, **overrides}


def manifest_hash(index):
    """sha256 of the sorted (relative path, label) lines of ``index``: what a
    saved model was trained on."""
    lines = sorted(f"{os.path.relpath(r.path, index.root)}\t{r.label}" for r in index.records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


SELECTION_RULE = (
    "Candidates: every model this run can save (feature-set models and packaged CNNs whose "
    "out-of-fold predictions come from these folds). 1) CV: keep those whose CV AUC is "
    "non-inferior to the best candidate's within the selection margin (upper end of the 95% CI "
    "of the paired patient-bootstrap difference). 2) Shift: where the original image shapes "
    "are known (the native subset beside the data), keep those whose shortcut reliance (mean "
    "within-class |Spearman rho| between the out-of-fold logit and the original width/height) "
    "is within the reliance margin of the least. 3) The cheapest to score (fewest feature "
    "passes), then the highest CV AUC.")


def choose(models, curves_cv, train, args):
    """Apply `SELECTION_RULE` to the run's models; returns what metrics.json
    records of it: the rule, each candidate's evidence, who was left out and why,
    and the choice (``"selected"``), plus the model the same rule picks among
    the feature-set models alone (``"best_feature_set_model"``)."""
    y, groups = train.labels, train.groups
    for name, info in models.items():
        info["candidate"] = info.get("deployable", True) and name != PROBE
    left_out = {name: ("a packaged CNN's predictions without its network: compared, not "
                       "deployable" if name != PROBE else "the same model as cnn/logreg")
                for name, info in models.items() if not info["candidate"]}
    for network in sorted(MODELS_DIR.glob("cnn_*.onnx")):
        if f"baseline/{network.stem}" not in models:
            left_out[f"baseline/{network.stem}"] = (
                "packaged, but it has no out-of-fold predictions on these training images "
                "and folds, so it cannot be compared or chosen")
    aspect = native_aspect_ratios(train)
    reliance = {}
    if aspect is not None:
        reliance = {name: shortcut_reliance(y, curves_cv[name], aspect)
                    for name, info in models.items() if info["candidate"]}
    rule = dict(margin=args.selection_margin, reliance_margin=RELIANCE_MARGIN)
    figures = {name: r["mean"] for name, r in reliance.items()}
    selected, tests = select_model(models, curves_cv, y, groups, args.n_boot, args.seed,
                                   reliance=figures, **rule)
    feature_sets = {name: info for name, info in models.items()
                    if info["candidate"] and not name.startswith("baseline/")}
    hybrid = select_model(feature_sets, curves_cv, y, groups, args.n_boot, args.seed,
                          reliance=figures, **rule)[0] if feature_sets else selected
    evidence = {name: {"cv_auc": models[name]["cv"]["auc"], "passes":
                       feature_passes(models[name]["features"]),
                       "shortcut_reliance": reliance.get(name),
                       "auc_loss_vs_best": tests.get(name)}
                for name, info in models.items() if info["candidate"]}
    return {"rule": SELECTION_RULE, **rule, "native_shapes_known": int(np.isfinite(
                aspect).sum()) if aspect is not None else 0,
            "evidence": evidence, "left_out": left_out, "selected": selected,
            "best_feature_set_model": hybrid, "tests": tests}


def training_augment(feature_set, copies, y):
    """`DecisionClassifier.fit`'s keyword arguments for the training copies:
    ``X_aug`` (each copy set's features of ``feature_set``, stacked), ``y_aug``
    and ``aug_source`` (the row of ``y`` each copy was made from); ``{}`` when
    ``copies`` (from `extract_training_copies`) is empty."""
    if not copies:
        return {}
    y = np.asarray(y)
    return {"X_aug": np.vstack([stack_views(feature_set, [c]) for c in copies]),
            "y_aug": np.tile(y, len(copies)),
            "aug_source": np.tile(np.arange(len(y)), len(copies))}


def stack_views(feature_set, view_features):
    """The model's input: each view's features of ``feature_set``, side by side."""
    names = feature_set.split("+")
    return np.hstack([found[e] for found in view_features for e in names])


def final_pipeline(feature_set, fitted_classifier, preprocessor, n_jobs, views=()):
    """The saved model of a feature-set comparison: `make_pipeline` around the
    classifier fitted on all the training data (no feature cache)."""
    return make_pipeline(feature_set, classifier=fitted_classifier, preprocessor=preprocessor,
                         n_jobs=n_jobs, views=views)
