"""Fine-tuned pure-CNN baselines: their saved out-of-fold predictions.

`experiments/cnn/train_cnn.py` cross-fits each CNN on `make_folds` and writes
``xray_features/models/oof/<name>.csv`` (columns ``path,label,fold,proba``; paths
relative to the data root). The final model, trained on all of train/, is
``xray_features/models/<name>.onnx``, with ``<name>.preprocess.json`` beside
it: the `default_preprocessor` options its training images went through
(``lung_crop``, ``resize_mode``). A baseline is used only when its folds are exactly
the folds of this run, so every model is compared on the same splits.

A baseline whose final model is not packaged (``cnn_ft224_acq``, fine-tuned at
224 px on a GPU by `experiments/cnn/finetune_224.py`) can still be scored on an
evaluation set its study scored: ``xray_features/models/oof/site_val/<name>.csv`` with
a ``sha256`` column holds its final model's probabilities, matched to the
evaluation images by file content; used only when it covers all of them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from xray_features.cnn import MODELS_DIR
from xray_features.dataset import fold_of
from xray_features.hashing import file_sha256

from .metrics import DEFAULT_THRESHOLD_RULE, choose_threshold

__all__ = ["OOF_DIR", "finetuned_baselines", "read_oof"]

# the packaged evidence: out-of-fold (and saved evaluation) predictions of the CNNs
OOF_DIR = MODELS_DIR / "oof"


def read_oof(path):
    """A baseline's out-of-fold table: ``{path: (label, fold, proba)}``, paths
    relative to the data root."""
    with open(path, newline="") as handle:
        return {row["path"]: (int(row["label"]), int(row["fold"]), float(row["proba"]))
                for row in csv.DictReader(handle)}


def packaged_cnn_scores(model_path, paths):
    """P(pneumonia) of ``paths`` by a packaged CNN, preprocessed as its
    ``.preprocess.json`` says its training images were."""
    from .assemble import make_cnn_pipeline

    # the saved CNN pipeline's read, preprocess and network steps: one definition of both
    steps = make_cnn_pipeline(model_path)[:-1]
    return steps.transform(list(paths))[:, 0].astype(np.float64)


def saved_eval_scores(table_path, paths):
    """The saved probabilities of ``paths`` in ``table_path`` (a prediction
    table with a ``sha256`` column), matched by file content; None unless the
    table covers every file."""
    if not Path(table_path).is_file():
        return None
    with open(table_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "sha256" not in rows[0]:
        return None
    table = {row["sha256"]: float(row["proba"]) for row in rows}
    hashes = [file_sha256(path) for path in paths]
    if not all(digest in table for digest in hashes):
        return None
    return np.array([table[digest] for digest in hashes])


def finetuned_baselines(train, folds, eval_index=None, oof_dir=OOF_DIR, models_dir=MODELS_DIR,
                        threshold_rule=DEFAULT_THRESHOLD_RULE):
    """Yield ``{"name", "oof", "threshold", "eval", "model_path"}`` for each usable
    baseline; its threshold is chosen from its out-of-fold predictions by
    ``threshold_rule``. ``model_path`` is the packaged ONNX network (None when
    only its predictions are kept: reported, but not deployable); ``eval``
    holds its uncalibrated P(pneumonia) of ``eval_index``, or None."""
    if not Path(oof_dir).is_dir():
        return
    folds_of_train = list(fold_of(folds, len(train)))
    relative = [os.path.relpath(r.path, train.root) for r in train.records]
    for csv_path in sorted(Path(oof_dir).glob("*.csv")):
        table = read_oof(csv_path)
        if not all(p in table for p in relative):
            continue  # predictions for other images
        rows = [table[p] for p in relative]
        if [fold for _, fold, _ in rows] != folds_of_train:
            continue  # other folds: not comparable
        oof = np.array([proba for _, _, proba in rows])
        threshold = choose_threshold(train.labels, oof, threshold_rule)
        scores = None
        model_path = Path(models_dir) / f"{csv_path.stem}.onnx"
        packaged = model_path.is_file()
        if eval_index is not None and packaged:
            scores = packaged_cnn_scores(model_path, eval_index.paths)
        elif eval_index is not None:
            scores = saved_eval_scores(Path(oof_dir) / "site_val" / csv_path.name, eval_index.paths)
        yield {"name": f"baseline/{csv_path.stem}", "oof": oof, "threshold": threshold,
               "eval": scores, "model_path": model_path if packaged else None}
