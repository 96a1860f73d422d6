"""Binary metrics, thresholds, patient-level bootstrap CIs and DeLong's test."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

__all__ = [
    "METRICS", "binary_metrics", "auc", "choose_threshold", "youden_threshold",
    "bootstrap_ci", "delong_test", "paired_bootstrap_auc",
]

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1", "brier")


def auc(y, p):
    """ROC AUC by the rank-sum formula (ties count one half)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y, p, threshold=0.5):
    """AUC, accuracy, sensitivity, specificity, F1 and Brier at ``threshold``."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "auc": auc(y, p),
        "accuracy": (tp + tn) / len(y),
        "sensitivity": sensitivity,
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "f1": 2 * precision * sensitivity / (precision + sensitivity) if precision + sensitivity else 0.0,
        "brier": float(np.mean((p - y) ** 2)),
        "threshold": float(threshold),
        "n": int(len(y)),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def youden_threshold(y, p):
    """The threshold maximising sensitivity + specificity - 1 (Youden's J).

    Candidates are midpoints between consecutive distinct scores, so the rule
    does not sit on a training score.
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    values = np.unique(p)
    candidates = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2,
                                 [values[-1] + 1e-9]])
    order = np.argsort(p)
    sorted_p, sorted_y = p[order], y[order]
    below = np.searchsorted(sorted_p, candidates, side="left")  # count predicted negative
    neg_below = np.concatenate([[0], np.cumsum(~sorted_y)])[below]
    pos_below = np.concatenate([[0], np.cumsum(sorted_y)])[below]
    sensitivity = 1 - pos_below / max(1, y.sum())
    specificity = neg_below / max(1, (~y).sum())
    return float(candidates[np.argmax(sensitivity + specificity - 1)])


def choose_threshold(y, p, rule="youden"):
    """Pick a threshold from (out-of-fold) training predictions.

    ``rule``: ``"youden"``, a number such as ``"0.5"``, or
    ``"sensitivity:0.95"`` (the highest threshold with at least that sensitivity).
    """
    rule = str(rule)
    if rule == "youden":
        return youden_threshold(y, p)
    if rule.startswith("sensitivity:"):
        target = float(rule.split(":", 1)[1])
        positives = np.sort(np.asarray(p)[np.asarray(y) == 1])
        k = int(np.floor((1 - target) * len(positives)))
        return float(positives[min(k, len(positives) - 1)])
    try:
        return float(rule)
    except ValueError:
        raise ValueError(f"unknown threshold rule {rule!r}: use 'youden', "
                         "'sensitivity:<target>' or a number") from None


def _bootstrap_weights(groups, n_boot, seed):
    """Yield, per replicate, how many times each sample is drawn when patients
    are resampled with replacement (a patient's images go together)."""
    _, patient = np.unique(np.asarray(groups), return_inverse=True)
    n_patients = patient.max() + 1
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        draws = np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
        yield draws[patient].astype(np.float64)


class _WeightedScores:
    """Metrics of fixed labels and scores under per-sample weights (counts).

    A bootstrap replicate is the same samples with integer weights, so sorting
    happens once and each replicate costs two `bincount` calls.
    """

    def __init__(self, y, p):
        self.y = np.asarray(y).astype(bool)
        self.p = np.asarray(p, dtype=np.float64)
        _, self.level = np.unique(self.p, return_inverse=True)
        self.n_levels = self.level.max() + 1

    def auc(self, w):
        pos = np.bincount(self.level, w * self.y, self.n_levels)
        neg = np.bincount(self.level, w * ~self.y, self.n_levels)
        neg_below = np.cumsum(neg) - neg
        return float((pos * (neg_below + neg / 2)).sum() / (pos.sum() * neg.sum()))

    def metrics(self, w, threshold):
        pred = self.p >= threshold
        tp, fp = w[pred & self.y].sum(), w[pred & ~self.y].sum()
        fn, tn = w[~pred & self.y].sum(), w[~pred & ~self.y].sum()
        precision = tp / (tp + fp) if tp + fp else 0.0
        sensitivity = tp / (tp + fn)
        return {
            "auc": self.auc(w),
            "accuracy": (tp + tn) / w.sum(),
            "sensitivity": sensitivity,
            "specificity": tn / (tn + fp),
            "f1": 2 * precision * sensitivity / (precision + sensitivity)
            if precision + sensitivity else 0.0,
            "brier": float(np.sum(w * (self.p - self.y) ** 2) / w.sum()),
        }

    def has_both_classes(self, w):
        return w[self.y].sum() > 0 and w[~self.y].sum() > 0


def bootstrap_ci(y, p, groups, threshold=0.5, n_boot=1000, seed=0, level=0.95):
    """95% CIs of every metric by resampling patients with replacement."""
    scores = _WeightedScores(y, p)
    samples = {name: [] for name in METRICS}
    for w in _bootstrap_weights(groups, n_boot, seed):
        if not scores.has_both_classes(w):
            continue
        values = scores.metrics(w, threshold)
        for name in METRICS:
            samples[name].append(values[name])
    tail = (1 - level) / 2 * 100
    return {
        name: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail))]
        for name, v in samples.items()
    }


def paired_bootstrap_auc(y, p_model, p_reference, groups, n_boot=1000, seed=0):
    """Patient-level paired bootstrap of AUC(model) - AUC(reference).

    Returns the observed difference, its 95% CI and a two-sided p-value.
    """
    model, reference = _WeightedScores(y, p_model), _WeightedScores(y, p_reference)
    diffs = np.asarray([model.auc(w) - reference.auc(w)
                        for w in _bootstrap_weights(groups, n_boot, seed)
                        if model.has_both_classes(w)])
    observed = auc(y, p_model) - auc(y, p_reference)
    p_value = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    return {"diff": float(observed), "ci": [float(np.percentile(diffs, 2.5)),
                                            float(np.percentile(diffs, 97.5))],
            "p_value": float(p_value)}


def delong_test(y, p1, p2):
    """DeLong's test for two correlated ROC AUCs on the same samples.

    Returns ``{"auc1", "auc2", "diff", "z", "p_value"}`` (two-sided).
    """
    y = np.asarray(y).astype(bool)
    scores = np.vstack([np.asarray(p1, float), np.asarray(p2, float)])
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    aucs, v10, v01 = [], [], []
    for k in range(2):
        tx, ty = rankdata(pos[k]), rankdata(neg[k])
        tz = rankdata(np.concatenate([pos[k], neg[k]]))
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)
        v01.append(1 - (tz[m:] - ty) / m)
    s = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
    variance = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    diff = aucs[0] - aucs[1]
    if variance <= 0:
        z, p_value = 0.0, 1.0
    else:
        z = diff / np.sqrt(variance)
        p_value = float(2 * norm.sf(abs(z)))
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": float(diff),
            "z": float(z), "p_value": p_value}
