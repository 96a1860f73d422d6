"""Seeds of one fine-tuning recipe: how much CV and site_val move between
seeds, and their mean-logit ensemble.

    # on a GPU, the same recipe with three seeds (folds are always the pipelines')
    python experiments/finetune_224.py --data DIR --out experiments/artifacts/ft224_cs_s1 \\
        --recipes acq_cs --seed 1
    python experiments/finetune_export.py experiments/artifacts/ft224_cs_s1 \\
        --oof-dir experiments/artifacts/ft224_cs_s1/oof --site-val
    python experiments/seed_study.py                 # CV, paired with the first seed
    python experiments/seed_study.py --site-val      # + one logged look at the ensemble

Each run's picked recipe is used. A seed's site_val scores are read from its
saved table (``<run>/oof/site_val/`` or ``xray_features/models/oof/site_val/``), which
`finetune_export.py --site-val` wrote and logged, so only the ensemble is a new
look. Its threshold is Youden on its out-of-fold mean logit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipelines.baselines import OOF_DIR, saved_eval_scores
from pipelines.decision import mean_logit
from pipelines.metrics import binary_metrics, youden_threshold
from xray_features.dataset import fold_of

from studies import (Results, headline, mean_logit_ensemble, site_val_look,  # noqa: E402
                     study_parser, train_site_folds)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
RUNS = [ARTIFACTS / name for name in ("ft224_cs", "ft224_cs_s1", "ft224_cs_s2")]


def out_of_fold(run, y, folds):
    """The run's picked recipe and its out-of-fold probabilities, checked
    against the pipelines' images and folds."""
    picked = json.loads((run / "results.json").read_text())["picked"]
    stored = np.load(run / "oof.npz")
    if list(stored["y"]) != list(y) or list(stored["fold"]) != list(fold_of(folds, len(y))):
        raise SystemExit(f"{run} was trained on other folds or images than the pipelines'")
    return picked, stored[f"proba_{picked}"]


def site_scores(run, picked, paths):
    """The run's final model's saved site_val probabilities, or exit."""
    name = f"cnn_{run.name}_{picked}.csv"
    for table in (run / "oof" / "site_val" / name, OOF_DIR / "site_val" / name):
        scores = saved_eval_scores(table, paths)
        if scores is not None:
            return scores
    raise SystemExit(f"no saved site_val table {name}: run experiments/finetune_export.py "
                     f"{run} --site-val")


def main(argv=None):
    parser = study_parser(__doc__, out="runs/seed_study.json")
    parser.add_argument("runs", nargs="*", type=Path, default=RUNS,
                        help="finetune_224.py output folders, one per seed "
                        "(default: ft224_cs, ft224_cs_s1, ft224_cs_s2 in experiments/artifacts)")
    args = parser.parse_args(argv)
    train, site, folds = train_site_folds(args.data)
    y = train.labels
    results, oof, aucs, thresholds, site_proba = Results(), [], [], [], []
    for run in args.runs:
        picked, p = out_of_fold(run, y, folds)
        threshold = youden_threshold(y, p)
        result = {"cv": headline(binary_metrics(y, p, threshold)), "threshold": round(threshold, 4)}
        if args.site_val:
            site_proba.append(site_scores(run, picked, site.paths))
            result["site_val (saved)"] = headline(binary_metrics(site.labels, site_proba[-1],
                                                                 threshold))
        results.add(f"{run.name}/{picked}", result)
        oof.append(p)
        thresholds.append(round(threshold, 4))
        aucs.append(result["cv"]["auc"])

    results.add("seed spread", {"cv_auc_mean": round(float(np.mean(aucs)), 4),
                                "cv_auc_sd": round(float(np.std(aucs, ddof=1)), 4),
                                "thresholds": thresholds})
    cv, threshold, test = mean_logit_ensemble(y, oof, oof[0], train.groups)
    result = {"cv": headline(cv), "threshold": round(threshold, 4), "cv_vs_first_seed": test}
    name = f"ensemble of {len(oof)} seeds"
    if args.site_val:
        site_val_look(result, f"cnn {name}, mean logit (seed_study)", cv, site.labels,
                      mean_logit(site_proba), threshold)
    results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
