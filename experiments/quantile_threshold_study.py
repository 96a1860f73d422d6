"""A label-free operating point for a new site: the threshold that calls a
known share of the site's own unlabelled films PNEUMONIA.

    python -m pipelines.run --features hog,lbp,cnn,hog+cnn,hog+lbp+cnn \\
        --eval-dir ../shared/data/kermany/site_val --out runs/full_ft224
    python experiments/quantile_threshold_study.py runs/full_ft224

A clinic that knows roughly what share of its films show pneumonia (its
prevalence) can set the threshold from a batch of its unlabelled films: the
(1 - prevalence) quantile of the model's scores on them. Measured as the site
recalibration is (`site_calibration.py`): site_val is split in two halves by
patient; the threshold comes from n unlabelled films drawn from one half and
is scored on the other half, both ways round, 25 draws each. The prevalence
the clinic states is site_val's own (0.617) and, to show what a wrong guess
costs, 0.5 and 0.75. Reads the run's site_val predictions; the labels are used
only to score the other half.

First it prints a diagnostic, the oracle operating point: the best
specificity at sensitivity >= 0.93 and the best accuracy over all thresholds,
chosen with site_val's own labels, for the run's models and the 224-px
fine-tuned CNNs' saved site_val tables (``xray_features/models/oof/site_val/cnn_ft224*``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from pipelines.baselines import OOF_DIR, read_oof
from pipelines.metrics import binary_metrics, quantile_threshold
from xray_features import make_folds

from pipelines.report import read_predictions  # noqa: E402
from studies import Results, study_parser  # noqa: E402

MODELS = ["hog+cnn/logreg", "baseline/cnn_ft224_acq", "baseline/cnn_ft224_cs_acq_cs"]


def oracle(y, p, sensitivity=0.93):
    """The best specificity at ``sensitivity`` or more, and the best accuracy,
    over every threshold (chosen with the labels: a diagnostic)."""
    fpr, tpr, _ = roc_curve(y, p)
    accuracy = (tpr * y.sum() + (1 - fpr) * (len(y) - y.sum())) / len(y)
    best_specificity = 1 - fpr[tpr >= sensitivity].min()
    return {f"specificity_at_sensitivity_{sensitivity}": round(float(best_specificity), 3),
            "best_accuracy": round(float(accuracy.max()), 3)}


def main(argv=None):
    parser = study_parser(__doc__, out="runs/quantile_threshold_study.json", site_val=False)
    parser.add_argument("run", type=Path, help="a pipelines.run --out folder scored on site_val")
    parser.add_argument("--sizes", default="20,40,80,154")
    parser.add_argument("--draws", type=int, default=25)
    args = parser.parse_args(argv)
    _, y, groups, scores = read_predictions(args.run / "predictions_eval.csv")
    halves = [test for _, test in make_folds(y, groups, n_splits=2, seed=0)]
    site_prevalence = round(float(y.mean()), 3)
    results = Results()
    oracles = {model: oracle(y, scores[model])
               for model in ("hog+cnn/logreg", "baseline/cnn-probe")}
    for table in sorted((OOF_DIR / "site_val").glob("cnn_ft224*.csv")):
        rows = list(read_oof(table).values())
        oracles[table.stem] = oracle(np.array([label for label, _, _ in rows]),
                                     np.array([proba for _, _, proba in rows]))
    results.add("oracle operating point (site_val's labels; a diagnostic)", oracles)
    for model in MODELS:
        p = scores[model]
        for prevalence in (site_prevalence, 0.5, 0.75):
            rng = np.random.default_rng(0)
            rows = {}
            for n in (int(s) for s in args.sizes.split(",")):
                found = []
                for fit_half, eval_half in (halves, halves[::-1]):
                    for _ in range(args.draws):
                        pick = rng.choice(fit_half, min(n, len(fit_half)), replace=False)
                        threshold = quantile_threshold(p[pick], prevalence)
                        found.append(binary_metrics(y[eval_half], p[eval_half], threshold))
                rows[n] = {key: [round(float(np.percentile([f[key] for f in found], q)), 3)
                                 for q in (50, 5, 95)]
                           for key in ("accuracy", "sensitivity", "specificity")}
            results.add(f"{model} at a stated prevalence of {prevalence}", rows)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
