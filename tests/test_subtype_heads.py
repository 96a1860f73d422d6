"""`pipelines.multiclass`: the three-class decision step and its heads."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipelines.metrics import youden_threshold
from pipelines.multiclass import (MultiClassDecision, TemperatureScaler, decide,
                                  make_multiclass_head, pneumonia_proba, subtype_proba)
from xray_features.dataset import make_folds

HEADS = [MultiClassDecision(make_multiclass_head("logreg"), cv=3),
         MultiClassDecision(make_multiclass_head("xgb"), cv=3, decision="argmax"),
         MultiClassDecision(make_multiclass_head("logreg"), cv=3, calibration=None)]


_THRESHOLDS = "predict applies the fitted thresholds, not the argmax of predict_proba, by design"


def _expected(estimator):
    if estimator.decision == "thresholds":
        return {"check_classifiers_train": _THRESHOLDS}
    return {}


@parametrize_with_checks(HEADS, expected_failed_checks=_expected)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _three_class_data(n=240, seed=0):
    X, y = make_classification(n_samples=n, n_features=12, n_informative=6, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.5, random_state=seed)
    names = np.array(["NORMAL", "BACTERIAL", "VIRAL"])[y]
    groups = np.arange(n) // 2
    return X, names, groups


@pytest.mark.parametrize("head", ["logreg", "xgb"])
def test_classes_in_the_given_order_and_out_of_fold_probabilities(head):
    X, y, groups = _three_class_data()
    classes = ("NORMAL", "BACTERIAL", "VIRAL")
    codes = np.searchsorted(np.array(classes), y, sorter=np.argsort(classes))
    folds = make_folds(codes, groups, n_splits=4, seed=0)
    clf = MultiClassDecision(make_multiclass_head(head), cv=folds, classes=classes).fit(X, y)
    assert list(clf.classes_) == list(classes)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(y), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_allclose(clf.oof_proba_.sum(axis=1), 1)
    for k, (_, test) in enumerate(folds):
        assert (clf.oof_fold_[test] == k).all()
    assert clf.calibrator_.temperature_ > 0
    if head == "xgb":
        assert clf.estimator_.get_xgb_params()["objective"] == "multi:softprob"
    assert 0 < clf.threshold_ < 1 and 0 < clf.subtype_threshold_ < 1
    assert np.mean(clf.predict(X) == y) > 0.8
    assert set(clf.predict(X)) <= set(classes)


@pytest.mark.parametrize("rule", ["sensitivity:0.95", "youden"])
def test_first_threshold_follows_the_threshold_rule_second_is_youden(rule):
    X, y, _ = _three_class_data(300, seed=1)
    clf = MultiClassDecision(make_multiclass_head("logreg"), cv=3,
                             classes=("NORMAL", "BACTERIAL", "VIRAL"), threshold_rule=rule)
    clf.fit(X, y)
    pneumonia = y != "NORMAL"
    p_pneumonia = pneumonia_proba(clf.oof_proba_)
    if rule == "youden":
        assert clf.threshold_ == youden_threshold(pneumonia, p_pneumonia)
    else:
        assert np.mean(p_pneumonia[pneumonia] >= clf.threshold_) >= 0.95
    assert clf.subtype_threshold_ == youden_threshold(
        y[pneumonia] == "VIRAL", subtype_proba(clf.oof_proba_[pneumonia]))


def test_unknown_label_is_a_clear_error():
    X, y, _ = _three_class_data(60)
    with pytest.raises(ValueError, match="not in classes"):
        MultiClassDecision(make_multiclass_head("logreg"), cv=3,
                           classes=("NORMAL", "BACTERIAL")).fit(X, y)


def test_augmented_rows_never_enter_a_test_fold():
    X, y, _ = _three_class_data(90)
    folds = [(np.arange(45, 90), np.arange(45)), (np.arange(45), np.arange(45, 90))]
    # copies that give away the label of their source: held out, they would leak
    X_aug = np.hstack([X[:, :-1], np.where(y == "VIRAL", 50.0, -50.0)[:, None]])
    plain = MultiClassDecision(make_multiclass_head("logreg"), cv=folds).fit(X, y)
    augmented = MultiClassDecision(make_multiclass_head("logreg"), cv=folds).fit(
        X, y, X_aug=X_aug, y_aug=y, aug_source=np.arange(90))
    assert augmented.oof_proba_.shape == plain.oof_proba_.shape
    assert not np.allclose(augmented.oof_proba_, plain.oof_proba_)


def test_decision_rule_known_values():
    proba = np.array([[0.7, 0.2, 0.1],    # P(pneumonia) 0.3 < 0.4: NORMAL
                      [0.5, 0.3, 0.2],    # 0.5 >= 0.4; P(viral | pneu) 0.4 < 0.45: BACTERIAL
                      [0.5, 0.2, 0.3],    # 0.6 >= 0.45: VIRAL
                      [0.1, 0.5, 0.4]])   # 0.444 < 0.45: BACTERIAL
    np.testing.assert_allclose(pneumonia_proba(proba), [0.3, 0.5, 0.5, 0.9])
    np.testing.assert_allclose(subtype_proba(proba), [1 / 3, 0.4, 0.6, 4 / 9])
    assert list(decide(proba, 0.4, 0.45)) == [0, 1, 2, 1]
    assert list(decide(proba, 0.4, 0.45, "argmax")) == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="decision"):
        decide(proba, 0.4, 0.45, "vote")


def test_temperature_scaling_keeps_the_order_and_lowers_the_loss():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), y] += 1.0
    overconfident = np.exp(4 * logits) / np.exp(4 * logits).sum(axis=1, keepdims=True)
    scaler = TemperatureScaler().fit(overconfident, y)
    assert 3 < scaler.temperature_ < 5.5  # it undoes the factor 4
    calibrated = scaler.transform(overconfident)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))

    def nll(p):
        return -np.log(p[np.arange(600), y]).mean()
    assert nll(calibrated) < nll(overconfident)
    assert clone(scaler).get_params() == {}
