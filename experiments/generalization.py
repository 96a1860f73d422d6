"""Generalisation study: what each change does to grouped CV and to site_val.

    python experiments/generalization.py --config all
    python experiments/generalization.py --config hog+cnn/logreg,cnn/logreg-balanced

Every configuration is fitted on train/ only; its threshold and calibration
come from out-of-fold predictions; site_val is scored once per configuration
and each look is appended to experiments/site_val_log.md (never used to fit
or to choose hyper-parameters inside a configuration).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.assemble import extract_features, make_head
from pipelines.decision import DecisionClassifier
from pipelines.metrics import binary_metrics
from studies import headline, log_row, study_parser, train_site_folds
from xray_features.preprocess import CLAHE, LungCrop, Resize
from transforms import EqualizeSharpness
from xray_features.texture import HOGFeatures


def logreg(C=0.01, class_weight=None):
    return Pipeline([("scale", StandardScaler()),
                     ("logreg", LogisticRegression(C=C, max_iter=3000,
                                                   class_weight=class_weight))])


def preprocessor(crop=True, clahe=True, blur_to=None, equalize=None):
    steps = []
    if clahe:
        steps.append(("clahe", CLAHE()))
    if crop:
        steps.append(("crop", LungCrop()))
    steps.append(("resize", Resize(224)))
    if blur_to:
        steps.append(("blur", Resize(blur_to)))
        steps.append(("back", Resize(224)))
    if equalize:
        steps.append(("sharpness", EqualizeSharpness(target=equalize)))
    return Pipeline(steps)


# name -> (preprocessor kwargs, extractors, head factory, threshold rule, extractor overrides)
CONFIGS = {
    "hog+cnn/logreg": ({}, "hog+cnn", lambda: logreg(), "youden", {}),
    "hog+cnn/xgb": ({}, "hog+cnn", lambda: make_head("xgb"), "youden", {}),
    "cnn/logreg": ({}, "cnn", lambda: logreg(), "youden", {}),
    "cnn/logreg-prior": ({}, "cnn", lambda: logreg(), "prior", {}),
    "cnn/logreg-balanced": ({}, "cnn", lambda: logreg(class_weight="balanced"), "0.5", {}),
    "hog+cnn/logreg-balanced": ({}, "hog+cnn", lambda: logreg(class_weight="balanced"), "0.5", {}),
    "cnn-pca64/logreg": ({}, "cnn", lambda: Pipeline([
        ("scale", StandardScaler()), ("pca", PCA(64, random_state=0)),
        ("logreg", LogisticRegression(C=0.1, max_iter=3000))]), "youden", {}),
    "cnn/logreg-nocrop": ({"crop": False}, "cnn", lambda: logreg(), "youden", {}),
    "hog+cnn/logreg-nocrop": ({"crop": False}, "hog+cnn", lambda: logreg(), "youden", {}),
    "cnn/logreg-raw": ({"crop": False, "clahe": False}, "cnn", lambda: logreg(), "youden", {}),
    "hog+cnn/logreg-raw": ({"crop": False, "clahe": False}, "hog+cnn", lambda: logreg(),
                           "youden", {}),
    "cnn/logreg-noclahe": ({"clahe": False}, "cnn", lambda: logreg(), "youden", {}),
    "cnn/logreg-blur112": ({"blur_to": 112}, "cnn", lambda: logreg(), "youden", {}),
    # target 250 ~ the 10th percentile of train/'s Laplacian variance after CLAHE + resize
    "cnn/logreg-eqsharp": ({"crop": False, "equalize": 250}, "cnn", lambda: logreg(), "youden", {}),
    "hog+cnn/logreg-eqsharp": ({"crop": False, "equalize": 250}, "hog+cnn", lambda: logreg(),
                               "youden", {}),
    "hog+cnn/logreg-coarsehog": ({}, "hog+cnn", lambda: logreg(), "youden",
                                 {"hog": HOGFeatures(image_size=64, pixels_per_cell=16)}),
}


def run_config(name, train, site, folds, cache_dir, progress):
    pre_kwargs, feature_set, head, rule, overrides = CONFIGS[name]
    names = feature_set.split("+")
    pre = preprocessor(**pre_kwargs)
    f_train = extract_features(train.paths, names, cache_dir, preprocessor=pre,
                               extractors=overrides, progress=progress)
    f_site = extract_features(site.paths, names, cache_dir, preprocessor=pre,
                              extractors=overrides, progress=progress)
    X = np.hstack([f_train[n] for n in names])
    Xs = np.hstack([f_site[n] for n in names])
    y = train.labels
    threshold_rule = f"{y.mean():.6f}" if rule == "prior" else rule
    clf = DecisionClassifier(head(), cv=folds, threshold_rule=threshold_rule).fit(X, y)
    cv = binary_metrics(y, clf.oof_proba_, clf.threshold_)
    site_p = clf.predict_proba(Xs)[:, 1]
    sv = binary_metrics(site.labels, site_p, clf.threshold_)
    return cv, sv


def main(argv=None):
    parser = study_parser(__doc__, site_val=False)
    parser.add_argument("--config", default="all",
                        help="comma-separated names, or 'all': " + ", ".join(CONFIGS))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    names = list(CONFIGS) if args.config == "all" else args.config.split(",")
    train, site, folds = train_site_folds(args.data)
    for name in names:
        cv, sv = run_config(name, train, site, folds, args.cache_dir, not args.quiet)
        log_row(name, cv, sv)
        print(json.dumps({"config": name, "cv": headline(cv), "site_val": headline(sv),
                          "threshold": round(cv["threshold"], 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
