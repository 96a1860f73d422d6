"""Prior shift: a site with another share of pneumonia, simulated from train/ alone.

    python -m pipelines.run --features hog+cnn --out runs/hogcnn   # (any run holds the model)
    python experiments/prior_shift_study.py runs/hogcnn

A model's calibrated out-of-fold probabilities on train/ (prevalence 0.743)
are resampled, images drawn with replacement within each class, to sites
with another prevalence (``--prevalences``; 0.625 is the official test
split's published 390 / 624). At each, the sensitivity and specificity at the
run's threshold for the model (its ``metrics.json``: Youden's in runs before the
``sensitivity:0.95`` rule), and the probabilities' calibration: their mean against the
site's prevalence and the Brier score, as they are and after prior
correction to the site's prevalence (`PlattCalibrator.with_prevalence`,
what ``pipelines.calibrate --prevalence`` does; its decisions are the same).
No site_val image is read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipelines.decision import prior_corrected
from pipelines.metrics import binary_metrics
from pipelines.report import read_predictions

from studies import Results, study_parser


def draw_site(y, prevalence, rng):
    """Indices of a resampled site as large as train/: images drawn with
    replacement within each class, a share ``prevalence`` of them PNEUMONIA."""
    n_pneumonia = round(prevalence * len(y))
    return np.concatenate([rng.choice(np.flatnonzero(y == 1), n_pneumonia),
                           rng.choice(np.flatnonzero(y == 0), len(y) - n_pneumonia)])


def main(argv=None):
    parser = study_parser(__doc__, out="runs/prior_shift_study.json", site_val=False)
    parser.add_argument("run", type=Path, help="a pipelines.run --out folder")
    parser.add_argument("--model", default="hog+cnn/logreg")
    parser.add_argument("--prevalences", default="0.1,0.3,0.5,0.625,0.9")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    threshold = json.loads((args.run / "metrics.json").read_text())["models"][args.model]["cv"][
        "threshold"]
    _, y, _, scores = read_predictions(args.run / "predictions_cv.csv")
    p = scores[args.model]
    trained = float(np.mean(y))
    rng = np.random.default_rng(args.seed)
    results = Results()
    results.add("train (out of fold)", {"prevalence": round(trained, 3),
                                        "mean_probability": round(float(np.mean(p)), 3)})
    for prevalence in map(float, args.prevalences.split(",")):
        corrected_all = prior_corrected(p, trained, prevalence)
        rows = {k: [] for k in ("sensitivity", "specificity", "accuracy",
                                "mean_p", "mean_p_corrected", "brier", "brier_corrected")}
        for _ in range(args.draws):
            site = draw_site(y, prevalence, rng)
            ys, ps, pc = y[site], p[site], corrected_all[site]
            metrics = binary_metrics(ys, ps, threshold)
            for k in ("sensitivity", "specificity", "accuracy"):
                rows[k].append(metrics[k])
            rows["mean_p"].append(np.mean(ps))
            rows["mean_p_corrected"].append(np.mean(pc))
            rows["brier"].append(np.mean((ps - ys) ** 2))
            rows["brier_corrected"].append(np.mean((pc - ys) ** 2))
        results.add(f"site prevalence {prevalence}",
                    {k: round(float(np.median(v)), 4) for k, v in rows.items()})
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
