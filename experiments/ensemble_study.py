"""Ensembles of models already cross-validated by `pipelines.run`.

    python -m pipelines.run --features hog+cnn --eval-dir ../shared/data/kermany/site_val \\
        --out runs/hogcnn_preds --no-save
    python experiments/ensemble_study.py runs/hogcnn_preds            # CV only
    python experiments/ensemble_study.py runs/hogcnn_preds --site-val # + one logged look each

An ensemble averages its members' calibrated logits, image by image: out of
fold on train/ (every member's out-of-fold predictions come from the same
patient-grouped folds) and on the evaluation set. Its threshold is the Youden
threshold of its out-of-fold average. The members were fixed before any look.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipelines.baselines import OOF_DIR, read_oof
from pipelines.decision import mean_logit
from pipelines.report import read_predictions

from studies import (Results, headline, mean_logit_ensemble, site_val_look,  # noqa: E402
                     study_parser)

ENSEMBLES = {
    "heads": ["hog+cnn/logreg", "hog+cnn/xgb"],
    "hybrid+scratch-cnn": ["hog+cnn/logreg", "baseline/cnn_small64_noaug"],
    "heads+scratch-cnn": ["hog+cnn/logreg", "hog+cnn/xgb", "baseline/cnn_small64_noaug"],
    # fixed before its folds finished training
    "hybrid+finetuned-lite0": ["hog+cnn/logreg", "baseline/cnn_lite0_128_aug_e3"],
}
REFERENCE = "hog+cnn/logreg"


def saved_site_scores(member, paths):
    """A fine-tuned CNN baseline's site_val scores from ``xray_features/models/oof/site_val/``
    (written by train_cnn.py), for runs without its packaged ONNX."""
    key = lambda path: tuple(Path(path).parts[-2:])  # noqa: E731  (label folder, file)
    table = {key(p): proba for p, (_, _, proba) in
             read_oof(OOF_DIR / "site_val" / f"{member.split('/', 1)[1]}.csv").items()}
    return np.array([table[key(p)] for p in paths])


def main(argv=None):
    parser = study_parser(__doc__, out="runs/ensemble_study.json")
    parser.add_argument("run", type=Path, help="a pipelines.run --out folder; with --site-val, "
                        "its predictions_eval.csv must be of site_val")
    parser.add_argument("--ensembles", default=",".join(ENSEMBLES), help=", ".join(ENSEMBLES))
    args = parser.parse_args(argv)

    _, y, groups, oof = read_predictions(args.run / "predictions_cv.csv")
    if args.site_val:
        site_paths, y_site, _, site = read_predictions(args.run / "predictions_eval.csv")
    results = Results()
    for name in args.ensembles.split(","):
        members = ENSEMBLES[name]
        cv, threshold, test = mean_logit_ensemble(y, [oof[m] for m in members], oof[REFERENCE],
                                                  groups)
        result = {"members": members, "cv": headline(cv), "threshold": round(threshold, 4),
                  f"cv_auc_minus_{REFERENCE}": {"diff": round(test["diff"], 4),
                                                "ci": [round(c, 4) for c in test["ci"]]}}
        if args.site_val:
            scores = [site[m] if m in site else saved_site_scores(m, site_paths) for m in members]
            site_val_look(result, f"ensemble {name} (ensemble_study)", cv, y_site,
                          mean_logit(scores), threshold)
        results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
