"""Cheaper XGBoost heads: fitting time against CV AUC, on the cached hog+cnn features.

    python benchmarks/xgb_head.py --data ../shared/data/kermany
    python benchmarks/xgb_head.py --data ../shared/data/kermany --site-val   # + one logged look each

Each variant is fitted as `pipelines.run` fits a head: 5 patient-grouped folds
plus the final fit, with the counter-squash copies, fold fits in parallel
threads. It prints a table of wall time (and its ratio to the shipped head,
measured in the same run) and out-of-fold AUC. The features come from the
feature cache (computed first if it is cold).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]

from pipelines.assemble import (extract_counter_squash_features, extract_features,  # noqa: E402
                                make_head)
from pipelines.decision import DecisionClassifier  # noqa: E402
from pipelines.metrics import auc, binary_metrics  # noqa: E402
from pipelines.comparison import default_cache_dir, load_training_index  # noqa: E402
from xray_features import index_dataset, make_folds  # noqa: E402


def log_row(*args, **kwargs):
    """`experiments/studies.py`'s site_val log writer (a script folder, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("studies", REPO / "experiments" / "studies.py")
    studies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(studies)
    return studies.log_row(*args, **kwargs)


def xgb(**params):
    return make_head("xgb").set_params(**params)


VARIANTS = {
    "shipped (100 trees, lr 0.2)": xgb,
    "50 trees, lr 0.3": lambda: xgb(n_estimators=50, learning_rate=0.3),
    "30 trees, lr 0.5": lambda: xgb(n_estimators=30, learning_rate=0.5),
    "SelectKBest(500) + shipped": lambda: Pipeline([("select", SelectKBest(f_classif, k=500)),
                                                    ("xgb", xgb())]),
    "SelectKBest(300) + shipped": lambda: Pipeline([("select", SelectKBest(f_classif, k=300)),
                                                    ("xgb", xgb())]),
    "PCA(128) + shipped": lambda: Pipeline([("pca", PCA(128, random_state=0)), ("xgb", xgb())]),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--cache-dir", default=default_cache_dir())
    parser.add_argument("--site-val", action="store_true",
                        help="also score <data>/site_val with each variant, at its train-chosen "
                        "threshold, and log the look (experiments/site_val_log.md)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "xgb_head.json")
    args = parser.parse_args(argv)

    train = load_training_index(args.data)
    y = train.labels
    folds = make_folds(y, train.groups, n_splits=5, seed=0)
    names = ["hog", "cnn"]
    features = extract_features(train.paths, names, args.cache_dir)
    copies = extract_counter_squash_features(train.paths, y, names, args.cache_dir)
    X, X_aug = (np.hstack([f[n] for n in names]) for f in (features, copies))
    if args.site_val:
        site = index_dataset(Path(args.data) / "site_val")
        site_features = extract_features(site.paths, names, args.cache_dir)
        X_site = np.hstack([site_features[n] for n in names])
    rows = {"load_average_start": os.getloadavg()[0]}
    for name, build in VARIANTS.items():
        started = time.perf_counter()
        clf = DecisionClassifier(build(), cv=folds, n_jobs=-1).fit(
            X, y, X_aug=X_aug, y_aug=y, aug_source=np.arange(len(y)))
        rows[name] = {"wall_s": round(time.perf_counter() - started, 1),
                      "cv_auc": round(auc(y, clf.oof_proba_), 4)}
        if args.site_val:
            cv = binary_metrics(y, clf.oof_proba_, clf.threshold_)
            sv = binary_metrics(site.labels, clf.predict_proba(X_site)[:, 1], clf.threshold_)
            rows[name]["site_val"] = {k: round(sv[k], 4) for k in
                                      ("auc", "accuracy", "sensitivity", "specificity")}
            log_row(f"hog+cnn/xgb {name} (xgb_head)", cv, sv)
        print(name, rows[name], flush=True)
    rows["load_average_end"] = os.getloadavg()[0]
    base = rows[next(iter(VARIANTS))]["wall_s"]
    print(f"\n{'XGBoost head (hog+cnn, counter-squash)':<40} {'fit s':>7} {'x shipped':>9} "
          f"{'CV AUC':>7} {'site AUC':>8}")
    for name in VARIANTS:
        r = rows[name]
        site_auc = f"{r['site_val']['auc']:8.4f}" if "site_val" in r else f"{'-':>8}"
        print(f"{name:<40} {r['wall_s']:7.1f} {r['wall_s'] / base:9.2f} {r['cv_auc']:7.4f} "
              f"{site_auc}")
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
