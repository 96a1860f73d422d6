"""Binary metrics, thresholds, patient-level bootstrap CIs and DeLong's test."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.stats import norm, rankdata

__all__ = [
    "METRICS", "binary_metrics", "auc", "choose_threshold", "youden_threshold",
    "quantile_threshold",
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


# The declared operating point (docs/results.md, "The operating point"): the highest
# threshold that keeps 95 % of the out-of-fold PNEUMONIA films called PNEUMONIA.
DEFAULT_THRESHOLD_RULE = "sensitivity:0.95"


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


def quantile_threshold(scores, prevalence):
    """The threshold that calls the ``prevalence`` share of ``scores`` with the
    highest values positive (``score >= threshold``; more on ties), from
    unlabelled scores. With no share to call, it lies above every score."""
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be between 0 and 1, got {prevalence!r}")
    ordered = np.sort(np.asarray(scores, dtype=float))[::-1]
    if len(ordered) == 0:
        raise ValueError("no scores to set a threshold from")
    k = int(round(prevalence * len(ordered)))
    if k == 0:
        return float(np.nextafter(ordered[0], np.inf))
    return float(ordered[k - 1])


_BLOCK = 2 ** 18  # samples x replicates per block: bounds memory and stays in cache


def _patients(groups):
    return np.unique(np.asarray(groups), return_inverse=True)[1]


def _bootstrap_counts(patient, n_boot, seed):
    """Yield blocks of (patients x replicates) counts of how many times each
    patient is drawn when patients are resampled with replacement (a patient's
    images go together). One `integers` call per block draws the same numbers
    as one call per replicate."""
    n_patients = patient.max() + 1
    rng = np.random.default_rng(seed)
    size = max(1, _BLOCK // len(patient))
    for start in range(0, n_boot, size):
        draws = rng.integers(0, n_patients, (min(size, n_boot - start), n_patients))
        draws += n_patients * np.arange(len(draws))[:, None]  # one bincount for all replicates
        counts = np.bincount(draws.ravel(), minlength=draws.size).reshape(draws.shape)
        yield counts.T.astype(np.float64, order="C")


def _divide(a, b):
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


class _WeightedScores:
    """Metrics of fixed labels and scores for a block of bootstrap replicates,
    given as how many times each patient was drawn (``counts``, patients x
    replicates).

    A replicate is the same samples with integer weights, so sorting happens
    once and each block costs a few products with per-patient tallies (exact,
    as sums of integers).
    """

    def __init__(self, y, p, patient):
        self.y = np.asarray(y).astype(bool)
        self.p = np.asarray(p, dtype=np.float64)
        self.patient, self.n_patients = patient, patient.max() + 1
        _, level = np.unique(self.p, return_inverse=True)
        # merge runs of consecutive score levels holding one class (same AUC, fewer levels)
        n_levels = level.max() + 1
        kind = ((np.bincount(level, self.y, n_levels) > 0)
                + 2 * (np.bincount(level, ~self.y, n_levels) > 0))  # 1 pos, 2 neg, 3 both
        level = np.cumsum(np.r_[True, (kind[1:] != kind[:-1]) | (kind[1:] == 3)])[level] - 1
        # images of each class per (level, patient)
        shape = (level.max() + 1, self.n_patients)
        self.pos_at = sparse.csr_matrix((self.y.astype(float), (level, patient)), shape)
        self.neg_at = sparse.csr_matrix(((~self.y).astype(float), (level, patient)), shape)
        self.n_pos, self.n_neg = self._per_patient(self.y), self._per_patient(~self.y)

    def _per_patient(self, x):
        return np.bincount(self.patient, x, self.n_patients)

    def auc(self, counts):
        pos, neg = self.pos_at @ counts, self.neg_at @ counts  # levels x replicates
        neg_below = np.cumsum(neg, axis=0) - neg
        return (pos * (neg_below + neg / 2)).sum(axis=0) / (pos.sum(axis=0) * neg.sum(axis=0))

    def metrics(self, counts, threshold):
        pred = self.p >= threshold
        tp, fp, fn, tn = (self._per_patient(m) @ counts for m in
                          (pred & self.y, pred & ~self.y, ~pred & self.y, ~pred & ~self.y))
        n = tp + fp + fn + tn
        precision, sensitivity = _divide(tp, tp + fp), tp / (tp + fn)
        return {
            "auc": self.auc(counts),
            "accuracy": (tp + tn) / n,
            "sensitivity": sensitivity,
            "specificity": tn / (tn + fp),
            "f1": _divide(2 * precision * sensitivity, precision + sensitivity),
            "brier": self._per_patient((self.p - self.y) ** 2) @ counts / n,
        }

    def with_both_classes(self, counts):
        """The replicates (columns) holding both classes, still C-ordered."""
        return counts.compress((self.n_pos @ counts > 0) & (self.n_neg @ counts > 0), axis=1)


def bootstrap_ci(y, p, groups, threshold=0.5, n_boot=1000, seed=0, level=0.95):
    """95% CIs of every metric by resampling patients with replacement."""
    patient = _patients(groups)
    scores = _WeightedScores(y, p, patient)
    samples = {name: [] for name in METRICS}
    for counts in _bootstrap_counts(patient, n_boot, seed):
        values = scores.metrics(scores.with_both_classes(counts), threshold)
        for name in METRICS:
            samples[name].extend(values[name])
    tail = (1 - level) / 2 * 100
    return {
        name: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail))]
        for name, v in samples.items()
    }


def paired_bootstrap_auc(y, p_model, p_reference, groups, n_boot=1000, seed=0):
    """Patient-level paired bootstrap of AUC(model) - AUC(reference).

    Returns the observed difference, its 95% CI and a two-sided p-value.
    """
    patient = _patients(groups)
    model = _WeightedScores(y, p_model, patient)
    reference = _WeightedScores(y, p_reference, patient)
    diffs = []
    for counts in _bootstrap_counts(patient, n_boot, seed):
        counts = model.with_both_classes(counts)
        diffs.extend(model.auc(counts) - reference.auc(counts))
    diffs = np.asarray(diffs)
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
