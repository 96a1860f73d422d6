import numpy as np
import pytest

from pipelines.metrics import (auc, binary_metrics, bootstrap_ci, choose_threshold, delong_test,
                               paired_bootstrap_auc, youden_threshold)

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
    from pipelines.metrics import _WeightedScores, _bootstrap_weights

    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, 150)
    y = rng.integers(0, 2, 150)
    p = np.round(rng.random(150), 1)  # many ties
    scores = _WeightedScores(y, p)
    _, patient = np.unique(groups, return_inverse=True)
    for w in list(_bootstrap_weights(groups, 5, seed=1)):
        index = np.repeat(np.arange(150), w.astype(int))
        explicit = binary_metrics(y[index], p[index], 0.45)
        weighted = scores.metrics(w, 0.45)
        for name in ("auc", "accuracy", "sensitivity", "specificity", "f1", "brier"):
            assert weighted[name] == pytest.approx(explicit[name], abs=1e-12)
        # a patient's images are drawn together
        for k in range(patient.max() + 1):
            assert len(set(w[patient == k])) == 1
