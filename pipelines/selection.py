"""Scoring models from their out-of-fold predictions, comparing them, choosing one."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from .decision import logit
from .metrics import binary_metrics, bootstrap_ci, delong_test, paired_bootstrap_auc

__all__ = ["SELECTION_MARGIN", "RELIANCE_MARGIN", "evaluate", "compare", "select_model",
           "feature_passes", "native_aspect_ratios", "shortcut_reliance"]

NATIVE_SUBSET = "kermany-native-subset"  # beside the data root: originals' shapes

# CV AUC a simpler model may lose and still be selected: a tenth of the half-width
# of a 308-image site's AUC CI (about +-0.02), far below what a new site resolves
SELECTION_MARGIN = 0.002
# shortcut reliance (mean within-class |Spearman rho|) a model may show above the
# least and still be selected: about two patient-bootstrap standard errors
RELIANCE_MARGIN = 0.05


def evaluate(y, p, groups, threshold, n_boot, seed):
    """Metrics at ``threshold`` with patient-bootstrap 95 % CIs."""
    metrics = binary_metrics(y, p, threshold)
    metrics["ci"] = bootstrap_ci(y, p, groups, threshold, n_boot=n_boot, seed=seed)
    return metrics


def compare(y, p_model, p_reference, groups, n_boot, seed):
    """Paired AUC difference model - reference: DeLong and patient bootstrap, and a verdict."""
    delong = delong_test(y, p_model, p_reference)
    boot = paired_bootstrap_auc(y, p_model, p_reference, groups, n_boot=n_boot, seed=seed)
    significant = boot["ci"][0] > 0 or boot["ci"][1] < 0
    if not significant:
        verdict = "no significant difference"
    else:
        verdict = "better than baseline" if boot["diff"] > 0 else "worse than baseline"
    return {"diff": boot["diff"], "ci": boot["ci"], "delong_p": delong["p_value"],
            "bootstrap_p": boot["p_value"], "verdict": verdict}


def select_model(models, oof, y, groups, n_boot=1000, seed=0, margin=SELECTION_MARGIN,
                 reliance=None, reliance_margin=RELIANCE_MARGIN):
    """The model the training data recommend, from out-of-fold predictions only.

    1. Candidates: the models marked ``"candidate"`` (default: every model
       whose name does not start with ``baseline/``).
    2. CV: those whose CV AUC is non-inferior to the best candidate's within
       ``margin`` stay: the upper end of the 95 % CI of AUC(best) - AUC(model)
       (patient-level paired bootstrap on ``oof[name]``) is below ``margin``,
       or the CI reaches 0.
    3. Shift (when ``reliance`` gives every one left a figure): those whose
       `shortcut_reliance` is within ``reliance_margin`` of the least stay.
    4. The cheapest to score wins (fewest feature passes: a fine-tuned CNN
       is one), then the highest CV AUC.

    Returns ``(name, {candidate: bootstrap result})``.
    """
    candidates = [n for n in models
                  if models[n].get("candidate", not n.startswith("baseline/"))]
    best = max(candidates, key=lambda n: models[n]["cv"]["auc"])
    tests = {n: paired_bootstrap_auc(y, oof[best], oof[n], groups, n_boot=n_boot, seed=seed)
             for n in candidates if n != best}
    eligible = [best] + [n for n, t in tests.items() if t["ci"][0] <= 0 or t["ci"][1] < margin]
    if reliance and all(np.isfinite(reliance.get(n, np.nan)) for n in eligible):
        least = min(reliance[n] for n in eligible)
        eligible = [n for n in eligible if reliance[n] <= least + reliance_margin]
    chosen = min(eligible, key=lambda n: (feature_passes(models[n]["features"]),
                                          -models[n]["cv"]["auc"]))
    return chosen, tests


def feature_passes(features):
    """How many feature extractors a model runs per image (``"hog+cnn"``: 2;
    a fine-tuned CNN, ``"cnn-finetuned"``: 1)."""
    return len(str(features).split("+"))


def native_aspect_ratios(index):
    """The original width / height of the training images of ``index`` (a
    `DatasetIndex`) that the aspect-preserving subset beside the data root
    (``<root>/../kermany-native-subset/MANIFEST.csv``) describes: an array
    with NaN where the original shape is unknown, or None without the subset."""
    manifest = Path(index.root).parent / NATIVE_SUBSET / "MANIFEST.csv"
    if not manifest.is_file():
        return None
    with open(manifest, newline="") as handle:
        shapes = {row["path"]: float(row["orig_width"]) / float(row["orig_height"])
                  for row in csv.DictReader(handle)}
    ratios = np.array([shapes.get(os.path.relpath(r.path, index.root), np.nan)
                       for r in index.records])
    return ratios if np.isfinite(ratios).any() else None


def shortcut_reliance(y, p, aspect):
    """How much a model's out-of-fold score follows the squash shortcut.

    The training images were squashed to squares from originals whose shape
    differs by class, so a model can learn the label from the distortion.
    Within each class the label is fixed, so a score that still rises with
    the original width / height ratio (``aspect``; NaN where unknown) is
    reading the distortion. Returns Spearman's rho between logit(``p``) and
    ``aspect`` within NORMAL and within PNEUMONIA images, the mean of their
    absolute values (``"mean"``, the figure the selection rule reads: a score
    that falls with the shape reads the distortion as much as one that rises;
    0 means no reliance),
    and the number of images with a known shape.
    """
    y, p, aspect = np.asarray(y), np.asarray(p, dtype=float), np.asarray(aspect, dtype=float)
    known = np.isfinite(aspect)
    result = {"n": int(known.sum())}
    for label, key in ((0, "normal"), (1, "pneumonia")):
        rows = known & (y == label)
        result[key] = float(spearmanr(logit(p[rows]), aspect[rows])[0]) if rows.sum() > 2 \
            else float("nan")
    result["mean"] = float(np.mean(np.abs([result["normal"], result["pneumonia"]])))
    return result
