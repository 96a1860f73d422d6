"""Which features move the site's NORMAL films towards PNEUMONIA: the hybrid's logit, split.

    python experiments/shift_attribution_study.py            # train/ only
    python experiments/shift_attribution_study.py --site-val # + site_val (a look; logged as prose)

The hybrid's head (``hog+cnn/logreg``, the default until the fine-tuned CNN) is
linear (standardise, then logistic regression), so its logit is a sum of one
term per feature, ``coef_j (x_j - mean_j) / scale_j``, plus the intercept. This
sums the terms by block (the 1,764 HOG features, the 1,280 embedding features)
and, for HOG, by block position on its 7 x 7 grid of 2 x 2-cell blocks over the
128-px film, and reports their means per class:
on train/ out of fold (each film's terms from the head of the fold that did not
train on it, refitted as `pipelines.run` fits them, with the counter-squash and
zoom copies) and, with ``--site-val``, on site_val (the head refitted on all of
train/ the same way, as `pipelines.run` fits ``hog+cnn/logreg``: the hybrid is no
longer the packaged default, so the study fits it rather than loading it). The
shift of site_val's NORMAL films from train's, per block and per HOG position,
says which features carry the over-calling. Only the heads are fitted.

Its ``--run`` mode (the same split of HOG beside a fine-tuned CNN's embeddings)
was retired with ``finetuned224_study.py``; docs/findings.md names the commit.
"""

from __future__ import annotations

import sys

import numpy as np

from pipelines.assemble import make_head
from pipelines.metrics import auc

from studies import (Results, default_training_set, fit_with_copies, hybrid_features,
                     study_parser, train_site_folds)

HOG_GRID = 7  # blocks per side: 128 px / 16-px cells = 8 cells, 2-cell blocks
HOG_PER_BLOCK = 2 * 2 * 9  # cells per block x orientations


def logit_terms(head, X):
    """Per image and feature: the term it adds to ``head``'s logit."""
    scale, logreg = head.named_steps["scale"], head.named_steps["logreg"]
    return (X - scale.mean_) / scale.scale_ * logreg.coef_[0]


def out_of_fold_terms(blocks, y, folds):
    """Train/'s logit terms, each film's from the fold head that did not see it;
    ``blocks[k] = (X, copies)`` are fold k's features."""
    terms = np.zeros(blocks[0][0].shape)
    for (X, copies), (train, test) in zip(blocks, folds):
        terms[test] = logit_terms(fit_with_copies(make_head("logreg"), X, y, copies, train),
                                  X[test])
    return terms


def default_blocks(train, folds, cache_dir):
    """The default hybrid's features, the same for every fold and the final fit."""
    X, copies = default_training_set(train, cache_dir)
    block = (np.asarray(X, dtype=np.float64), [np.asarray(C, dtype=np.float64) for C in copies])
    return [block] * (len(folds) + 1)


def summarise(terms, n_hog):
    """Mean logit terms: the HOG block, the embedding block, and HOG per grid position."""
    hog = terms[:, :n_hog]
    grid = hog.reshape(len(terms), HOG_GRID, HOG_GRID, HOG_PER_BLOCK).sum(axis=3)
    return {"hog": round(float(hog.sum(axis=1).mean()), 3),
            "cnn": round(float(terms[:, n_hog:].sum(axis=1).mean()), 3),
            "hog_grid": np.round(grid.mean(axis=0), 2).tolist()}


def main(argv=None):
    parser = study_parser(__doc__, out="runs/shift_attribution_study.json")
    args = parser.parse_args(argv)
    train, site, folds = train_site_folds(args.data)
    y = train.labels
    n_hog = HOG_GRID * HOG_GRID * HOG_PER_BLOCK
    blocks = default_blocks(train, folds, args.cache_dir)
    X, copies = blocks[-1]
    head = fit_with_copies(make_head("logreg"), X, y, copies)
    sets = {"train (out of fold)": (train, out_of_fold_terms(blocks, y, folds))}
    if args.site_val:
        sets["site_val"] = (site, logit_terms(head, hybrid_features(site.paths, args.cache_dir)))
    results = Results()
    results.add("head's intercept", float(head.named_steps["logreg"].intercept_[0]))
    summaries = {}
    for name, (index, terms) in sets.items():
        blocks_sum = {"hog": terms[:, :n_hog].sum(axis=1), "cnn": terms[:, n_hog:].sum(axis=1)}
        blocks_sum["both"] = blocks_sum["hog"] + blocks_sum["cnn"]
        results.add(f"{name} AUC of each block's terms",
                    {block: round(auc(index.labels, v), 4) for block, v in blocks_sum.items()})
        for label, label_name in ((0, "NORMAL"), (1, "PNEUMONIA")):
            key = f"{name} {label_name}"
            summaries[key] = summarise(terms[index.labels == label], n_hog)
            results.add(key, {k: v for k, v in summaries[key].items() if k != "hog_grid"})
    if args.site_val:
        site_normal, train_normal = summaries["site_val NORMAL"], summaries[
            "train (out of fold) NORMAL"]
        shift = {block: round(site_normal[block] - train_normal[block], 3)
                 for block in ("hog", "cnn")}
        shift["hog_grid"] = np.round(np.array(site_normal["hog_grid"])
                                     - np.array(train_normal["hog_grid"]), 2).tolist()
        results.add("site_val NORMAL - train NORMAL", shift)
    results["per_class"] = summaries
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
