import numpy as np
import pytest

from pipelines.metrics import (auc, binary_metrics, bootstrap_ci, choose_threshold, delong_test,
                              paired_bootstrap_auc, quantile_threshold, youden_threshold)

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.3, 0.65, 0.95, 0.6])


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, P, threshold=0.5)
    # predicted positive: 0.8 (neg), 0.7, 0.9, 0.65, 0.95, 0.6 (pos) -> tp=5 fp=1 tn=3 fn=1
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 5}
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * (5 / 6) * (5 / 6) / (5 / 6 + 5 / 6))
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))
    # AUC: of the 24 (pos, neg) pairs, the positives 0.3 beats only 0.1 (3 lost),
    # 0.6/0.65/0.7 lose to 0.8 (3 lost) -> 18/24
    assert m["auc"] == pytest.approx(18 / 24)


def test_auc_counts_ties_as_half():
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.9]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_youden_threshold_separates_perfectly_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    t = youden_threshold(y, p)
    assert 0.3 < t < 0.6
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] == 1 and m["specificity"] == 1


def test_youden_threshold_maximises_j():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    t = youden_threshold(y, p)
    best = binary_metrics(y, p, t)
    j = best["sensitivity"] + best["specificity"] - 1
    for other in np.linspace(0, 1, 101):
        m = binary_metrics(y, p, other)
        assert m["sensitivity"] + m["specificity"] - 1 <= j + 1e-12


def test_sensitivity_rule_reaches_target():
    t = choose_threshold(Y, P, "sensitivity:0.8")
    assert binary_metrics(Y, P, t)["sensitivity"] >= 0.8
    assert choose_threshold(Y, P, "0.42") == 0.42
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(Y, P, "best")


def test_delong_identical_models_and_known_auc():
    result = delong_test(Y, P, P)
    assert result["diff"] == 0 and result["p_value"] == 1.0
    assert result["auc1"] == pytest.approx(auc(Y, P))


def test_delong_detects_a_clearly_better_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = y + rng.normal(0, 0.5, 400)
    poor = y + rng.normal(0, 2.0, 400)
    result = delong_test(y, good, poor)
    assert result["diff"] > 0.1 and result["p_value"] < 1e-4
    boot = paired_bootstrap_auc(y, good, poor, np.arange(400), n_boot=300)
    assert boot["ci"][0] > 0 and boot["p_value"] < 0.01
    assert boot["diff"] == pytest.approx(result["diff"])


def test_bootstrap_ci_contains_estimate_and_resamples_patients():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.4 + rng.random(200) * 0.6, 0, 1)
    ci = bootstrap_ci(y, p, np.arange(200), 0.5, n_boot=300)
    point = binary_metrics(y, p, 0.5)
    for name in ("auc", "accuracy", "sensitivity", "specificity"):
        assert ci[name][0] <= point[name] <= ci[name][1]
    # one patient with every image: a patient bootstrap cannot vary at all
    same = bootstrap_ci(y, p, np.zeros(200), 0.5, n_boot=20)
    assert same["auc"][0] == pytest.approx(same["auc"][1])


def test_weighted_bootstrap_equals_explicit_patient_resampling():
    """Each replicate weights samples by how often their patient was drawn;
    that must give the metrics of the explicitly concatenated resample."""
    from pipelines.metrics import METRICS, _bootstrap_counts, _patients, _WeightedScores

    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, 150)
    y = rng.integers(0, 2, 150)
    p = np.round(rng.random(150), 1)  # many ties
    patient = _patients(groups)
    counts = next(_bootstrap_counts(patient, 5, seed=1))  # patients x replicates
    assert counts.shape == (patient.max() + 1, 5)
    assert (counts.sum(axis=0) == patient.max() + 1).all()
    weighted = _WeightedScores(y, p, patient).metrics(counts, 0.45)
    for r in range(5):
        index = np.repeat(np.arange(150), counts[patient, r].astype(int))
        explicit = binary_metrics(y[index], p[index], 0.45)
        for name in METRICS:
            assert weighted[name][r] == pytest.approx(explicit[name], abs=1e-12)


def test_vectorised_bootstrap_matches_a_per_replicate_loop(monkeypatch):
    """Blocks of replicates give, replicate by replicate, what a plain loop over
    the same draws gives with sklearn's weighted AUC and weighted confusion counts,
    skipping the same one-class replicates."""
    from sklearn.metrics import roc_auc_score

    from pipelines import metrics

    monkeypatch.setattr(metrics, "_BLOCK", 7 * 30)  # blocks of 7 replicates, the last partial
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 9, 30)
    y = np.isin(groups, [2, 7]).astype(int)  # two positive patients: some replicates lack one
    p = np.round(rng.random(30), 1)  # ties
    q = np.round(0.3 * y + 0.6 * rng.random(30), 1)
    threshold, n_boot, seed = 0.85, 60, 0

    _, patient = np.unique(groups, return_inverse=True)
    n_patients = patient.max() + 1
    draws = np.random.default_rng(seed)
    ref = {name: [] for name in metrics.METRICS}
    ref_diffs = []
    for _ in range(n_boot):
        w = np.bincount(draws.integers(0, n_patients, n_patients), minlength=n_patients)[patient]
        if w[y == 1].sum() == 0 or w[y == 0].sum() == 0:
            continue
        pred = p >= threshold
        tp, fp = w[pred & (y == 1)].sum(), w[pred & (y == 0)].sum()
        fn, tn = w[~pred & (y == 1)].sum(), w[~pred & (y == 0)].sum()
        precision = tp / (tp + fp) if tp + fp else 0.0
        sensitivity = tp / (tp + fn)
        ref["auc"].append(roc_auc_score(y, p, sample_weight=w))
        ref["accuracy"].append((tp + tn) / w.sum())
        ref["sensitivity"].append(sensitivity)
        ref["specificity"].append(tn / (tn + fp))
        ref["f1"].append(2 * precision * sensitivity / (precision + sensitivity)
                         if precision + sensitivity else 0.0)
        ref["brier"].append(np.average((p - y) ** 2, weights=w))
        ref_diffs.append(ref["auc"][-1] - roc_auc_score(y, q, sample_weight=w))
    assert 0 < len(ref_diffs) < n_boot and 0.0 in ref["f1"]

    scores = metrics._WeightedScores(y, p, metrics._patients(groups))
    blocks = [scores.with_both_classes(counts)
              for counts in metrics._bootstrap_counts(metrics._patients(groups), n_boot, seed)]
    assert len(blocks) == 9
    values = [scores.metrics(counts, threshold) for counts in blocks]
    for name in metrics.METRICS:
        got = np.concatenate([v[name] for v in values])
        np.testing.assert_allclose(got, ref[name], rtol=0, atol=1e-12, err_msg=name)

    ci = metrics.bootstrap_ci(y, p, groups, threshold, n_boot=n_boot, seed=seed)
    for name in metrics.METRICS:
        assert ci[name] == pytest.approx(list(np.percentile(ref[name], [2.5, 97.5])), abs=1e-12)
    boot = metrics.paired_bootstrap_auc(y, p, q, groups, n_boot=n_boot, seed=seed)
    ref_diffs = np.asarray(ref_diffs)
    assert boot["ci"] == pytest.approx(list(np.percentile(ref_diffs, [2.5, 97.5])), abs=1e-12)
    assert boot["p_value"] == pytest.approx(
        min(1.0, 2 * min((ref_diffs <= 0).mean(), (ref_diffs >= 0).mean())), abs=1e-12)
    assert boot["diff"] == pytest.approx(auc(y, p) - auc(y, q), abs=1e-12)


def test_quantile_threshold_calls_the_stated_share():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 0.05])
    threshold = quantile_threshold(scores, 0.3)
    assert threshold == 0.7 and (scores >= threshold).sum() == 3
    assert quantile_threshold(scores, 0.04) > scores.max()  # a share of 0.4 images: none
    assert (scores >= quantile_threshold(scores, 0.96)).all()
    tied = np.array([0.2, 0.5, 0.5, 0.5, 0.9])
    assert (tied >= quantile_threshold(tied, 0.4)).sum() == 4  # ties go to the positive side
    for bad in (0, 1, -0.1, 1.2):
        with pytest.raises(ValueError, match="between 0 and 1"):
            quantile_threshold(scores, bad)
    with pytest.raises(ValueError, match="no scores"):
        quantile_threshold([], 0.5)
