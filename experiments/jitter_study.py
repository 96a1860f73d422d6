"""Aspect jitter: does label-independent stretching add to counter-squash?

    python experiments/jitter_study.py                # CV and stress tests (train/ only)
    python experiments/jitter_study.py --site-val     # also one site_val look per model, logged

Counter-squash copies (`aspect_study.py`) move each class's distortion onto
the other class at one fixed factor. Jitter copies stretch every image, of
either class, by a factor drawn from a few levels between 1/F and F (F = the
NORMAL/PNEUMONIA aspect ratio of the originals), so no particular distortion
goes with a label. Each configuration trains hog+cnn/logreg on the originals
plus its copies (copies of training-fold images only) and is stress-tested
out of fold on the counter-squash and on the jitter copies of its test folds.
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from pipelines.assemble import extract_counter_squash_features, extract_features, make_head
from pipelines.metrics import binary_metrics
from xray_features.augment import NORMAL_TO_PNEUMONIA_ASPECT, Stretch
from xray_features.preprocess import default_preprocessor

from studies import (Results, cross_fit, headline, site_val_look, study_parser,  # noqa: E402
                     train_site_folds)

# aspect changes, as powers of F: <0 widens the content, >0 narrows it
JITTER_LEVELS = (-1.0, -0.5, 0.5, 1.0)


def jitter_stretch(level, factor=NORMAL_TO_PNEUMONIA_ASPECT):
    """Zoom by ``factor`` on both axes (crops all four sides, like
    counter-squash), then change the aspect by ``factor ** level``."""
    change = factor ** level
    return Stretch(vertical=factor * max(change, 1.0), horizontal=factor * max(1 / change, 1.0))


def jitter_features(paths, names, cache_dir, preprocessor, seed=0):
    """One jitter copy per image, its level drawn by ``seed``; features in input order."""
    levels = np.random.default_rng(seed).integers(len(JITTER_LEVELS), size=len(paths))
    out = {}
    for k, level in enumerate(JITTER_LEVELS):
        index = np.flatnonzero(levels == k)
        stretched = Pipeline([("stretch", jitter_stretch(level)),
                              ("preprocess", clone(preprocessor))])
        part = extract_features([paths[i] for i in index], names, cache_dir,
                                preprocessor=stretched)
        for name, rows in part.items():
            out.setdefault(name, np.empty((len(paths), rows.shape[1]), np.float32))[index] = rows
    return out


def main(argv=None):
    parser = study_parser(__doc__, out="runs/jitter_study.json")
    parser.add_argument("--features", default="hog+cnn")
    args = parser.parse_args(argv)

    train, site, folds = train_site_folds(args.data)
    y = train.labels
    names = args.features.split("+")
    pre = default_preprocessor()
    feats = extract_features(train.paths, names, args.cache_dir, preprocessor=pre)
    counter = extract_counter_squash_features(train.paths, y, names, args.cache_dir,
                                              preprocessor=pre)
    jitter = jitter_features(train.paths, names, args.cache_dir, pre)
    stack = lambda f: np.hstack([f[n] for n in names])  # noqa: E731
    X, X_counter, X_jitter = stack(feats), stack(counter), stack(jitter)
    X_site = stack(extract_features(site.paths, names, args.cache_dir, preprocessor=pre)) \
        if args.site_val else None

    configs = {"countersquash": [X_counter], "jitter": [X_jitter],
               "countersquash+jitter": [X_counter, X_jitter]}
    results = Results()
    for config, copies in configs.items():
        name = f"{args.features}/logreg-{config}"
        p, stressed, threshold, score = cross_fit(
            make_head("logreg"), X, y, folds, copies,
            {"counter_squashed": X_counter, "jittered": X_jitter})
        cv = binary_metrics(y, p, threshold)
        result = {"cv": headline(cv), "threshold": round(threshold, 4),
                  **{k: headline(binary_metrics(y, s, threshold)) for k, s in stressed.items()}}
        if args.site_val and config != "countersquash":  # that one is logged already
            site_val_look(result, name + " (jitter_study)", cv, site.labels, score(X_site),
                          threshold)
        results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
