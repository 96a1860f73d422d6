"""Real image shapes: pad-resizing versus squashing, measured out of fold.

    python experiments/native_resize_study.py

The training images are 224x224 squares squashed from originals of any
shape; users feed the originals. `../shared/data/kermany-native-subset` holds
1,566 training images at their real aspect ratio. Each is scored by the
out-of-fold model that never saw its patient (the same 5 folds as
`pipelines.run`), three ways: its 224-px squashed copy (what the model was
trained on), the native image resized with ``Resize(mode="pad")``, and with
``mode="squash"``. No site_val is used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from pipelines.assemble import extract_counter_squash_features, extract_features, make_head
from pipelines.metrics import binary_metrics
from xray_features import index_dataset
from xray_features.dataset import fold_of
from xray_features.preprocess import default_preprocessor

from studies import (Results, fold_models, headline, study_parser,  # noqa: E402
                     train_site_folds)


def main(argv=None):
    parser = study_parser(__doc__, out="runs/native_resize_study.json", site_val=False)
    parser.add_argument("--native", default=None,
                        help="default: kermany-native-subset beside --data")
    parser.add_argument("--features", default="cnn,hog+cnn")
    args = parser.parse_args(argv)
    native_root = Path(args.native or Path(args.data).parent / "kermany-native-subset")

    train, _, folds = train_site_folds(args.data)
    y = train.labels
    fold = fold_of(folds, len(y))
    native = index_dataset(native_root)
    position = {os.path.basename(p): i for i, p in enumerate(train.paths)}
    rows = np.array([position[os.path.basename(p)] for p in native.paths])
    assert np.array_equal(native.labels, y[rows]), "native subset labels must match train/"

    names = sorted({n for fs in args.features.split(",") for n in fs.split("+")})
    feats = extract_features(train.paths, names, args.cache_dir)
    copies = extract_counter_squash_features(train.paths, y, names, args.cache_dir)
    views = {"kermany224": {n: feats[n][rows] for n in names}}
    for mode in ("pad", "squash"):
        views[f"native-{mode}"] = extract_features(
            native.paths, names, args.cache_dir, preprocessor=default_preprocessor(resize_mode=mode))

    results = Results()
    for fs in args.features.split(","):
        parts = fs.split("+")
        X = np.hstack([feats[n] for n in parts])
        X_aug = np.hstack([copies[n] for n in parts])
        for augmented in (False, True):
            name = f"{fs}/logreg" + ("-countersquash" if augmented else "")
            models, calibrator, threshold, _ = fold_models(make_head("logreg"), X, y, folds,
                                                           [X_aug] if augmented else [])
            result = {}
            for view, f in views.items():
                Xv = np.hstack([f[n] for n in parts])
                raw = np.array([models[fold[r]].predict_proba(Xv[i:i + 1])[0, 1]
                                for i, r in enumerate(rows)])
                m = binary_metrics(y[rows], calibrator.transform(raw), threshold)
                result[view] = headline(m)
            results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
