"""`pipelines.decision.cross_fit`: the one cross-fitting loop of the binary and
three-class decisions, with training copies routed to training folds only."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from pipelines.decision import DecisionClassifier, cross_fit


def _data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, 3)) + y[:, None]
    X_aug = X + rng.normal(scale=0.1, size=X.shape)  # one copy per row
    return X, y, (X_aug, y.copy(), np.arange(n))


def test_each_row_is_scored_once_by_the_model_of_its_fold_trained_with_its_copies():
    X, y, augment = _data()
    folds = [(np.flatnonzero(np.arange(60) % 3 != k), np.flatnonzero(np.arange(60) % 3 == k))
             for k in range(3)]
    raw, fold, final = cross_fit(LogisticRegression(), [X], y, folds, augment)
    for k, (train, test) in enumerate(folds):
        expected = clone(LogisticRegression()).fit(np.vstack([X[train], augment[0][train]]),
                                                   np.concatenate([y[train], y[train]]))
        np.testing.assert_allclose(raw[test], expected.predict_proba(X[test])[:, 1])
        assert (fold[test] == k).all()
    everything = LogisticRegression().fit(np.vstack([X, augment[0]]), np.concatenate([y, y]))
    np.testing.assert_allclose(final.coef_, everything.coef_)


def test_several_scores_per_row_and_threads_give_the_same_result():
    X, y, _ = _data(1)
    scores = lambda model, views: model.predict_proba(views[0])  # noqa: E731
    one, fold, _ = cross_fit(LogisticRegression(), [X], y, 4, score=scores)
    two, fold2, _ = cross_fit(LogisticRegression(), [X], y, 4, score=scores, n_jobs=2)
    assert one.shape == (60, 2)
    np.testing.assert_allclose(one.sum(axis=1), 1.0)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(fold, fold2)


def test_folds_that_miss_a_row_are_refused():
    X, y, _ = _data()
    with pytest.raises(ValueError, match="exactly once"):
        cross_fit(LogisticRegression(), [X], y, [(np.arange(30), np.arange(30, 59))])


def test_decision_classifier_is_cross_fit_then_calibration_then_threshold():
    X, y, augment = _data(2)
    model = DecisionClassifier(LogisticRegression(), cv=3).fit(X, y, *augment)
    raw, fold, _ = cross_fit(LogisticRegression(), [X], y, 3, augment)
    np.testing.assert_array_equal(model.raw_oof_proba_, raw)
    np.testing.assert_array_equal(model.oof_fold_, fold)
    np.testing.assert_allclose(model.oof_proba_, model.calibrator_.transform(raw))
