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
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipelines.metrics import binary_metrics, quantile_threshold
from xray_features import make_folds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ensemble_study import read_predictions  # noqa: E402
from studies import Results, study_parser  # noqa: E402

MODELS = ["hog+cnn/logreg", "baseline/cnn_ft224_acq", "baseline/cnn_ft224_cs_acq_cs"]


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
