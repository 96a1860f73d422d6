"""How much the default logistic head moves when its inputs move by one bit.

A fresh feature cache gave 3 of the 5,494 training and site_val HOG rows one
float32 ulp away from the cached ones, and the five-set comparison's
``hog/logreg`` Youden threshold went 0.738 -> 0.803 (docs/results.md). This
study repeats that on train/ alone: the default hybrid's logistic head is
cross-fitted on the pipelines' folds with the default copies, once as it is and
once with ``--rows`` random training rows nudged by one ulp (every non-zero
value), with the shipped solver settings (float32 features, lbfgs
``tol=1e-4``), with float64 features, and with float64 features and
``tol=1e-6``. For each it reports the out-of-fold AUC, the Youden threshold
before and after the nudge, the largest change of an out-of-fold logit, and
the fitting time. No site_val image is read.

    python experiments/head_noise_study.py --data ../shared/data/kermany
"""

from __future__ import annotations

import sys
import time

import numpy as np
from pipelines.assemble import make_head
from pipelines.decision import logit
from pipelines.metrics import auc

from studies import (Results, default_training_set, fold_models, study_parser,  # noqa: E402
                     train_site_folds)

SOLVERS = {"float32, tol 1e-4 (shipped)": (np.float32, 1e-4),
           "float64, tol 1e-4": (np.float64, 1e-4),
           "float64, tol 1e-6": (np.float64, 1e-6)}


def logistic_head(tol):
    """The default head (`pipelines.assemble.make_head("logreg")`) with its own ``tol``."""
    return make_head("logreg").set_params(logreg__tol=tol)


def nudged(X, rows):
    """``X`` with every non-zero value of ``rows`` moved up by one float32 ulp
    (zeros stay: a denormal in an all-zero column breaks the scaler)."""
    X = X.copy()
    part = X[rows]
    X[rows] = np.where(part != 0, np.nextafter(part, np.float32(np.inf)), part)
    return X


def main(argv=None):
    parser = study_parser(__doc__, out="runs/head_noise_study.json", site_val=False)
    parser.add_argument("--rows", type=int, default=3, help="training rows to nudge")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, _, folds = train_site_folds(args.data)
    y = train.labels
    X, copies = default_training_set(train, args.cache_dir)
    rows = np.random.default_rng(args.seed).choice(len(y), args.rows, replace=False)
    variants = {"as is": X, "nudged": nudged(X, rows)}
    results = Results()
    for name, (dtype, tol) in SOLVERS.items():
        runs = {}
        for variant, Xv in variants.items():
            started = time.perf_counter()
            _, _, threshold, raw = fold_models(logistic_head(tol), Xv.astype(dtype), y, folds,
                                               [C.astype(dtype) for C in copies])
            runs[variant] = {"seconds": time.perf_counter() - started, "raw": raw,
                             "threshold": threshold}
        shift = np.abs(logit(runs["as is"]["raw"]) - logit(runs["nudged"]["raw"]))
        results.add(name, {
            "cv_auc": round(auc(y, runs["as is"]["raw"]), 6),
            "threshold": round(runs["as is"]["threshold"], 4),
            "threshold_nudged": round(runs["nudged"]["threshold"], 4),
            "max_logit_change": round(float(shift.max()), 5),
            "median_logit_change": round(float(np.median(shift)), 6),
            "fit_seconds_5_folds": round(runs["as is"]["seconds"], 1),
        })
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
