"""What the study scripts share: their common options, the train/ folds, the
default hybrid's features, the cross-fitting of a head with augmented copies,
the site_val log and the JSON results.

Studies run from the repository root (``python experiments/<study>.py``) and
write only under ``runs/`` (git-ignored) or where ``--out`` says. A site_val
look is appended to ``runs/site_val_looks.md`` and printed, to be copied into
the tracked record, ``experiments/site_val_log.md``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from sklearn.base import clone

from pipelines.assemble import DEFAULT_AUGMENT, extract_features, extract_training_copies
from pipelines.decision import PlattCalibrator, mean_logit
from pipelines.metrics import binary_metrics, paired_bootstrap_auc, youden_threshold
from pipelines.comparison import default_cache_dir
from pipelines.report import log_look
from xray_features import index_dataset, make_folds

LOG = Path("runs") / "site_val_looks.md"  # git-ignored; the tracked record is site_val_log.md
HYBRID = ["hog", "cnn"]  # the default model's extractors, in its column order


def study_parser(doc, out=None, site_val=True):
    """Options every study takes: --data, --cache-dir, and --out (a JSON file,
    when ``out`` gives its default) and --site-val (when ``site_val``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--cache-dir", default=default_cache_dir())
    if out is not None:
        parser.add_argument("--out", type=Path, default=Path(out))
    if site_val:
        parser.add_argument("--site-val", action="store_true",
                            help=f"score site_val once per model and log it ({LOG}: copy "
                            "the printed rows into experiments/site_val_log.md)")
    return parser


def train_site_folds(data):
    """train/, site_val/ and the pipelines' folds (5, patient-grouped, seed 0)."""
    index = index_dataset(data)
    train = index.subset("train")
    site = index.subset("site_val") if "site_val" in index.splits else None
    return train, site, make_folds(train.labels, train.groups, n_splits=5, seed=0)


def stack(found, names=HYBRID):
    """``{name: features}`` as one matrix, the ``names``' columns side by side."""
    return np.hstack([found[name] for name in names])


def hybrid_features(paths, cache_dir, **kwargs):
    """The default hybrid's features of ``paths`` (`extract_features` options in ``kwargs``)."""
    return stack(extract_features(paths, HYBRID, cache_dir, **kwargs))


def default_training_set(train, cache_dir):
    """The hybrid's features of train/ and a list of its copy sets' (each one
    row per image), as `pipelines.run` trains by default."""
    copies = extract_training_copies(DEFAULT_AUGMENT, train.paths, train.labels, HYBRID,
                                     cache_dir)
    return hybrid_features(train.paths, cache_dir), [stack(c) for c in copies]


def fit_with_copies(head, X, y, copies=(), rows=None):
    """A clone of ``head`` fitted on ``rows`` of ``X`` (all when None) and the
    same rows of each copy set in ``copies`` (one copy per row of ``X``)."""
    if rows is None:
        return clone(head).fit(np.vstack([X] + list(copies)),
                               np.concatenate([y] * (1 + len(copies))))
    return clone(head).fit(np.vstack([X[rows]] + [C[rows] for C in copies]),
                           np.concatenate([y[rows]] * (1 + len(copies))))


def fold_models(head, X, y, folds, copies=()):
    """The fold models, their calibrator, the OOF Youden threshold and the raw
    OOF scores. Each array in ``copies`` holds one copy per row of ``X``; each
    fold's model also trains on the copies of its training rows (never of its
    test rows)."""
    models, raw = [], np.zeros(len(y))
    for train, test in folds:
        models.append(fit_with_copies(head, X, y, copies, train))
        raw[test] = models[-1].predict_proba(X[test])[:, 1]
    calibrator = PlattCalibrator().fit(raw, y)
    return models, calibrator, youden_threshold(y, calibrator.transform(raw)), raw


def cross_fit(head, X, y, folds, copies=(), stress=None):
    """`fold_models`, then: the calibrated OOF scores of the originals, those of
    each copy set in ``stress`` ({name: copies of every row}, scored by the
    model of the row's fold), the OOF Youden threshold, and a scorer refitted
    on all the originals and their ``copies``."""
    models, calibrator, threshold, raw = fold_models(head, X, y, folds, copies)
    stressed = {}
    for name, C in (stress or {}).items():
        scores = np.zeros(len(y))
        for model, (_, test) in zip(models, folds):
            scores[test] = model.predict_proba(C[test])[:, 1]
        stressed[name] = calibrator.transform(scores)
    final = fit_with_copies(head, X, y, copies)
    return (calibrator.transform(raw), stressed, threshold,
            lambda Z: calibrator.transform(final.predict_proba(Z)[:, 1]))


def headline(metrics):
    """AUC, accuracy, sensitivity and specificity, rounded for the JSON report."""
    return {k: round(metrics[k], 4) for k in ("auc", "accuracy", "sensitivity", "specificity")}


def mean_logit_ensemble(y, members, reference, groups):
    """The mean logit of ``members`` (out-of-fold probabilities): its CV metrics at
    its own Youden threshold, the threshold, and the paired patient-bootstrap
    AUC difference against ``reference``."""
    p = mean_logit(members)
    threshold = youden_threshold(y, p)
    return (binary_metrics(y, p, threshold), threshold,
            paired_bootstrap_auc(y, p, reference, groups))


class Results(dict):
    """A study's results: each is printed as a JSON line when added, all are saved at the end."""

    def add(self, name, result):
        self[name] = result
        print(json.dumps({name: result}), flush=True)

    def save(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self, indent=2))


def site_val_look(result, name, cv, labels, scores, threshold):
    """Score site_val once at the train-chosen ``threshold``: add its headline
    to ``result`` and log the look."""
    sv = binary_metrics(labels, scores, threshold)
    result["site_val"] = headline(sv)
    log_row(name, cv, sv)


def log_row(name, cv, sv):
    """Log one site_val look (``cv`` holds the threshold too) in `LOG`, and print
    its row for the tracked record, experiments/site_val_log.md."""
    log_look(LOG, name, cv, sv, record="experiments/site_val_log.md")
