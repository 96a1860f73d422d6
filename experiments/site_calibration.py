"""How many labelled images does a new site need? Recalibration, measured honestly.

    python experiments/site_calibration.py --model xray_features/models/default_pipeline.joblib

site_val is split in two halves by patient. The model's calibration and
threshold are refitted (`pipelines.calibrate.recalibrate`) on n images drawn
from one half and scored on the other half, both ways round, 25 draws each.
"""

import argparse
import json
import os
import sys

import numpy as np

from pipelines.calibrate import head_scores, recalibrate
from pipelines.metrics import binary_metrics
from pipelines.persist import load_model
from xray_features import index_dataset, make_folds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--sizes", default="20,40,80,154")
    parser.add_argument("--draws", type=int, default=25)
    args = parser.parse_args(argv)
    model, _ = load_model(args.model)
    site = index_dataset(args.data).subset("site_val")
    raw = head_scores(model, site.paths)
    y = site.labels
    decision = model.steps[-1][1]
    before = binary_metrics(y, decision.calibrator_.transform(raw), decision.threshold_)
    print(f"no recalibration: {json.dumps({k: round(before[k], 3) for k in ('auc', 'accuracy', 'sensitivity', 'specificity')})}")
    halves = [test for _, test in make_folds(y, site.groups, n_splits=2, seed=0)]
    rng = np.random.default_rng(0)
    print("| labelled images | accuracy | sensitivity | specificity | (median [5th, 95th pct] on the other half, "
          f"{args.draws} draws x 2 directions) |")
    print("|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        scores = []
        for fit_half, eval_half in (halves, halves[::-1]):
            for _ in range(args.draws):
                pick = rng.choice(fit_half, min(n, len(fit_half)), replace=False)
                if y[pick].min() == y[pick].max():
                    continue
                new = recalibrate(model, raw[pick], y[pick]).steps[-1][1]
                p = new.calibrator_.transform(raw[eval_half])
                scores.append(binary_metrics(y[eval_half], p, new.threshold_))
        cells = []
        for key in ("accuracy", "sensitivity", "specificity"):
            v = np.array([s[key] for s in scores])
            cells.append(f"{np.median(v):.3f} [{np.percentile(v, 5):.3f}, {np.percentile(v, 95):.3f}]")
        print(f"| {n} | " + " | ".join(cells) + " | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
