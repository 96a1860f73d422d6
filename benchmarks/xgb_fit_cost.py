"""Where one XGBoost head fit spends its time, on the cached hog+cnn features.

    python benchmarks/xgb_fit_cost.py --data ../shared/data/kermany

One fold's training rows as `pipelines.run` fits them by default (the first
fold's training images and their counter-squash and zoom copies), one thread
(as each of the parallel fold fits gets). It times the shipped head, the
`QuantileDMatrix` it builds first (quantile sketch and binning) on its own,
and the shipped head with one setting changed, and prints each with its ratio
to the shipped fit measured in the same run (best of ``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from pipelines.assemble import (DEFAULT_AUGMENT, extract_features,  # noqa: E402
                                extract_training_copies, make_head)
from pipelines.comparison import default_cache_dir, load_training_index  # noqa: E402
from xray_features import make_folds  # noqa: E402

NAMES = ["hog", "cnn"]
# name -> parameters changed from the shipped head
CHANGES = {
    "shipped head (100 trees, depth 3)": {},
    "1 tree": {"n_estimators": 1},
    "depth 1": {"max_depth": 1},
    "subsample 0.4 (shipped 0.8)": {"subsample": 0.4},
    "colsample_bytree 0.05 (shipped 0.2)": {"colsample_bytree": 0.05},
    "max_bin 64 (shipped 16)": {"max_bin": 64},
}


def best_time(run, rounds):
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--cache-dir", default=default_cache_dir())
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "xgb_fit_cost.json")
    args = parser.parse_args(argv)

    import xgboost

    train = load_training_index(args.data)
    y = train.labels
    train_rows = make_folds(y, train.groups, n_splits=5, seed=0)[0][0]
    sets = [extract_features(train.paths, NAMES, args.cache_dir)]
    sets += extract_training_copies(DEFAULT_AUGMENT, train.paths, y, NAMES, args.cache_dir)
    X = np.vstack([np.hstack([s[n] for n in NAMES])[train_rows] for s in sets])
    Y = np.tile(y[train_rows], len(sets))
    load_start = os.getloadavg()[0]

    head = make_head("xgb", n_jobs=1)
    rows = {"QuantileDMatrix only (sketch + binning)": best_time(
        lambda: xgboost.QuantileDMatrix(X, Y, max_bin=head.max_bin, nthread=1), args.rounds)}
    for name, change in CHANGES.items():
        rows[name] = best_time(lambda: make_head("xgb", n_jobs=1).set_params(**change).fit(X, Y),
                               args.rounds)
    shipped = rows["shipped head (100 trees, depth 3)"]
    print(f"one fold fit: {X.shape[0]} rows x {X.shape[1]} features, 1 thread, "
          f"load average {load_start:.2f}")
    print(f"{'variant':42s} {'seconds':>8s} {'x shipped':>10s}")
    for name, seconds in rows.items():
        print(f"{name:42s} {seconds:8.1f} {seconds / shipped:10.2f}")
    args.out.write_text(json.dumps({
        "command": "python benchmarks/xgb_fit_cost.py " + " ".join(argv or sys.argv[1:]),
        "shape": list(X.shape), "xgboost": xgboost.__version__, "load_average_start": load_start,
        "seconds": {k: round(v, 2) for k, v in rows.items()},
        "ratio_to_shipped": {k: round(v / shipped, 3) for k, v in rows.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
