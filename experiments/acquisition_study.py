"""Acquisition cues: grey levels and sharpness differ by class in train/;
does the default model lean on them?

    python experiments/acquisition_study.py

1. Label-free image statistics (on the raw 224-px films, before CLAHE): the
   grey-level spread (standard deviation), the 5th and 95th percentiles and
   the sharpness (Laplacian variance), on train/ by class and on site_val/
   (whose labels are not read), with how well each predicts the label on
   train/ (AUC).
2. A train-only stress test: the default model (hog+cnn, logistic head,
   counter-squash and zoom copies, as `pipelines.run` trains it), fitted
   out of fold, scores altered copies of its test images at its out-of-fold
   threshold: re-rendered grey levels (`Intensity`: black level lifted,
   contrast flattened, gamma either way) and blurred (`EqualizeSharpness`
   down to train PNEUMONIA's median sharpness, which blurs most NORMAL films
   and few PNEUMONIA ones).
"""

from __future__ import annotations

import sys

import numpy as np

from pipelines.assemble import make_head
from pipelines.metrics import auc, binary_metrics
from xray_features import ReadImages
from xray_features.preprocess import default_preprocessor
from xray_features.views import view_preprocessor

from cnn.stress import STRESS, laplacian_variance
from studies import (Results, cross_fit, default_training_set, headline,  # noqa: E402
                     hybrid_features, study_parser, train_site_folds)


def film_statistics(paths, batch=256):
    """Per image: standard deviation, 5th and 95th percentiles and Laplacian
    variance of the raw film."""
    rows = []
    for start in range(0, len(paths), batch):
        for image in ReadImages().transform(paths[start:start + batch]):
            rows.append((image.std(), *np.percentile(image, [5, 95]), laplacian_variance(image)))
    return np.array(rows)


STATS = ("std", "p5", "p95", "sharpness")


def describe(stats):
    return {"n": len(stats), **{f"{name}_median": round(float(np.median(stats[:, j])), 3)
                                for j, name in enumerate(STATS)}}


def main(argv=None):
    parser = study_parser(__doc__, out="runs/acquisition_study.json", site_val=False)
    args = parser.parse_args(argv)
    train, site, folds = train_site_folds(args.data)
    y = train.labels
    results = Results()

    stats = film_statistics(list(train.paths))
    for label, name in ((0, "train NORMAL"), (1, "train PNEUMONIA")):
        results.add(name, describe(stats[y == label]))
    results.add("train: AUC of the statistic for PNEUMONIA",
                {name: round(auc(y, stats[:, j]), 3) for j, name in enumerate(STATS)})
    if site is not None:
        results.add("site_val (unlabelled)", describe(film_statistics(list(site.paths))))

    X, copies = default_training_set(train, args.cache_dir)
    stress = {name: hybrid_features(train.paths, args.cache_dir, preprocessor=view_preprocessor(
                  step, default_preprocessor())) for name, step in STRESS.items()}
    p, stressed, threshold, _ = cross_fit(make_head("logreg"), X, y, folds, copies, stress)
    result = {"cv": headline(binary_metrics(y, p, threshold)), "threshold": round(threshold, 4)}
    result.update({name: headline(binary_metrics(y, scores, threshold))
                   for name, scores in stressed.items()})
    results.add("hog+cnn/logreg-countersquash-zoom (the default)", result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
