"""The aspect-ratio shortcut: measure it, stress-test it in CV, train against it.

    python experiments/aspect_study.py                 # diagnosis + CV stress test (no site_val)
    python experiments/aspect_study.py --site-val      # also one site_val look per model, logged

1. Diagnosis (train/ only). The native subset's manifest gives each image's
   original size: how well the original aspect ratio predicts the label, and
   how the hog+cnn model's out-of-fold score follows it within each class.
2. CV stress test. Every training image gets a "counter-squashed" copy
   (`xray_features.augment.counter_squash`): NORMAL images look as if
   squashed from a PNEUMONIA-shaped original and vice versa. Out-of-fold
   models score the copies of their test fold: a model that relies on the
   distortion loses specificity on the NORMAL copies.
3. Counter-squash augmentation: each fold's model also trains on the copies
   of its training images (never of its test images).
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from pipelines.assemble import extract_counter_squash_features, extract_features, make_head
from pipelines.metrics import auc, binary_metrics
from xray_features.preprocess import default_preprocessor

from studies import (Results, cross_fit, headline, site_val_look, study_parser,  # noqa: E402
                     train_site_folds)

NATIVE = "kermany-native-subset/MANIFEST.csv"


def diagnose(data_root, train, p_oof):
    manifest = Path(data_root).parent / NATIVE
    if not manifest.is_file():
        return {}
    with open(manifest) as handle:
        aspect = {os.path.basename(r["path"]): float(r["orig_width"]) / float(r["orig_height"])
                  for r in csv.DictReader(handle)}
    a = np.array([aspect.get(os.path.basename(p), np.nan) for p in train.paths])
    y, known = train.labels, ~np.isnan(a)
    logit = np.log(p_oof / (1 - p_oof))
    out = {"n_native": int(known.sum()),
           "aspect_median": {"normal": float(np.median(a[known & (y == 0)])),
                             "pneumonia": float(np.median(a[known & (y == 1)]))},
           "aspect_auc_for_label": auc(y[known], a[known])}
    for label, name in ((0, "normal"), (1, "pneumonia")):
        m = known & (y == label)
        out[f"spearman_score_vs_aspect_{name}"] = float(spearmanr(a[m], logit[m]).correlation)
    return out


def summary(y, p, p_copy, threshold):
    cv, copies = binary_metrics(y, p, threshold), binary_metrics(y, p_copy, threshold)
    return {"cv": headline(cv), "counter_squashed": headline(copies),
            "threshold": round(threshold, 4)}, cv


def main(argv=None):
    parser = study_parser(__doc__, out="runs/aspect_study.json")
    parser.add_argument("--features", default="cnn,hog+cnn")
    parser.add_argument("--lung-crop", action="store_true",
                        help="preprocess with LungCrop and a squashing resize, so every lung "
                        "box becomes a square (normalises the distortion)")
    args = parser.parse_args(argv)

    train, site, folds = train_site_folds(args.data)
    y = train.labels
    names = sorted({n for fs in args.features.split(",") for n in fs.split("+")})
    pre = (default_preprocessor(crop=True, resize_mode="squash") if args.lung_crop
           else default_preprocessor())
    tag = "-lungsquash" if args.lung_crop else ""
    feats = extract_features(train.paths, names, args.cache_dir, preprocessor=pre)
    copies = extract_counter_squash_features(train.paths, y, names, args.cache_dir,
                                             preprocessor=pre)
    site_feats = (extract_features(site.paths, names, args.cache_dir, preprocessor=pre)
                  if args.site_val else None)

    results = Results()
    for fs in args.features.split(","):
        parts = fs.split("+")
        X = np.hstack([feats[n] for n in parts])
        X_copy = np.hstack([copies[n] for n in parts])
        for augmented in (False, True):
            name = f"{fs}/logreg{tag}" + ("-countersquash" if augmented else "")
            p, stressed, threshold, score = cross_fit(
                make_head("logreg"), X, y, folds, [X_copy] if augmented else [],
                {"counter_squashed": X_copy})
            p_copy = stressed["counter_squashed"]
            result, cv = summary(y, p, p_copy, threshold)
            if fs == "hog+cnn":
                result["diagnosis"] = diagnose(args.data, train, p)
            if args.site_val:
                site_val_look(result, name + " (aspect_study)", cv, site.labels,
                              score(np.hstack([site_feats[n] for n in parts])), threshold)
            results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
