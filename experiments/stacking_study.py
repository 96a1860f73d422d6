"""Stacking: a logistic regression over the models' out-of-fold logits, cross-fitted.

    python -m pipelines.run --features hog,lbp,cnn,hog+cnn,hog+lbp+cnn \\
        --eval-dir ../shared/data/kermany/site_val --out runs/full_zoom
    python experiments/stacking_study.py runs/full_zoom

The stacker's input is each member's calibrated out-of-fold probability, as a
logit; it is fitted on four folds' rows and scores the fifth (the run's own
patient-grouped folds), so its own predictions are out of fold too. (The
members' out-of-fold probabilities on those four folds came from models that
had seen the fifth: the usual second-level approximation, which flatters the
stack a little if anything.) Its threshold is the Youden threshold of its
out-of-fold scores. The result is compared, paired by patient, with the
selected model; the stack would replace it only by the run's selection rule
(a CV AUC gain beyond the 0.002 margin), so site_val is not read here.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from pipelines.decision import logit
from pipelines.metrics import binary_metrics, paired_bootstrap_auc, youden_threshold

from pipelines.report import read_predictions  # noqa: E402
from studies import Results, headline, study_parser  # noqa: E402

REFERENCE = "hog+cnn/logreg"
# fixed before the first run of this study
STACKS = {
    "heads": ["hog+cnn/logreg", "hog+cnn/xgb"],
    "all": ["hog/xgb", "hog/logreg", "lbp/xgb", "lbp/logreg", "cnn/xgb", "cnn/logreg",
            "hog+cnn/xgb", "hog+cnn/logreg", "hog+lbp+cnn/xgb", "hog+lbp+cnn/logreg"],
}


def read_folds(path):
    with open(path) as handle:
        return np.array([int(row["fold"]) for row in csv.DictReader(handle)])


def cross_fit_stack(logits, y, folds, C=1.0):
    """Out-of-fold probabilities of a logistic regression on ``logits`` (n, members)."""
    p = np.zeros(len(y))
    for k in np.unique(folds):
        test = folds == k
        model = LogisticRegression(C=C).fit(logits[~test], y[~test])
        p[test] = model.predict_proba(logits[test])[:, 1]
    return p


def main(argv=None):
    parser = study_parser(__doc__, out="runs/stacking_study.json", site_val=False)
    parser.add_argument("run", type=Path, help="a pipelines.run --out folder")
    args = parser.parse_args(argv)
    _, y, groups, oof = read_predictions(args.run / "predictions_cv.csv")
    folds = read_folds(args.run / "predictions_cv.csv")
    results = Results()
    reference = oof[REFERENCE]
    results.add(REFERENCE, {"cv": headline(binary_metrics(y, reference,
                                                          youden_threshold(y, reference)))})
    for name, members in STACKS.items():
        logits = np.column_stack([logit(oof[m]) for m in members])
        p = cross_fit_stack(logits, y, folds)
        threshold = youden_threshold(y, p)
        test = paired_bootstrap_auc(y, p, reference, groups, n_boot=1000, seed=0)
        results.add(f"stack {name}", {
            "members": members, "cv": headline(binary_metrics(y, p, threshold)),
            "threshold": round(threshold, 4),
            f"cv_auc_minus_{REFERENCE}": {"diff": round(test["diff"], 4),
                                          "ci": [round(c, 4) for c in test["ci"]]}})
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
