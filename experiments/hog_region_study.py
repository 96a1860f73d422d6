"""HOG without the film's edges: the hybrid with HOG blocks only from inside the film.

    python experiments/hog_region_study.py               # CV
    python experiments/hog_region_study.py --site-val    # + one logged look per variant

Designed after a site_val look: `shift_attribution_study.py --site-val` found
most of HOG's share of the site's over-calling in the bottom row and the
right-hand column of its 7 x 7 grid of blocks. Both variants keep the default's
features and training (hog+cnn, logistic head, counter-squash and zoom copies)
and drop HOG columns by block position, before any fitting:

- ``hog-no-bottom``: without the bottom row of blocks (1,512 HOG features);
- ``hog-inner``: without the outer ring of blocks (the 5 x 5 inside, 900).

Because the idea came from site_val, a gain here is a hypothesis for the
held-out half, not a result; CV decides whether it may replace the default.
"""

from __future__ import annotations

import sys

import numpy as np

from pipelines.assemble import (DEFAULT_AUGMENT, extract_features, extract_training_copies,
                                make_head)
from pipelines.metrics import binary_metrics

from shift_attribution_study import HOG_GRID, HOG_PER_BLOCK  # noqa: E402
from studies import (HYBRID, Results, cross_fit, headline, site_val_look,  # noqa: E402
                     study_parser, train_site_folds)

# variant -> block positions (row, column) kept
VARIANTS = {
    "hog-no-bottom": [(r, c) for r in range(HOG_GRID - 1) for c in range(HOG_GRID)],
    "hog-inner": [(r, c) for r in range(1, HOG_GRID - 1) for c in range(1, HOG_GRID - 1)],
}


def hog_columns(blocks):
    """Indices of the HOG features of the given block positions (skimage's order:
    block row, block column, then the block's 36 values)."""
    return np.concatenate([np.arange(HOG_PER_BLOCK) + (r * HOG_GRID + c) * HOG_PER_BLOCK
                           for r, c in blocks])


def hybrid(features, columns):
    return np.hstack([features["hog"][:, columns], features["cnn"]])


def main(argv=None):
    parser = study_parser(__doc__, out="runs/hog_region_study.json")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS))
    args = parser.parse_args(argv)
    train, site, folds = train_site_folds(args.data)
    y = train.labels
    feats = extract_features(train.paths, HYBRID, args.cache_dir)
    copies = extract_training_copies(DEFAULT_AUGMENT, train.paths, y, HYBRID, args.cache_dir)
    site_feats = extract_features(site.paths, HYBRID, args.cache_dir) if args.site_val else None
    results = Results()
    for variant in args.variants.split(","):
        columns = hog_columns(VARIANTS[variant])
        p, _, threshold, score = cross_fit(make_head("logreg"), hybrid(feats, columns), y, folds,
                                           [hybrid(c, columns) for c in copies])
        cv = binary_metrics(y, p, threshold)
        result = {"n_hog_features": len(columns), "cv": headline(cv),
                  "threshold": round(threshold, 4)}
        name = f"{variant}+cnn/logreg-countersquash-zoom"
        if args.site_val:
            site_val_look(result, name + " (hog_region_study)", cv, site.labels,
                          score(hybrid(site_feats, columns)), threshold)
        results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
