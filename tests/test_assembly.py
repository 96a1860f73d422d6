"""Pipeline assembly and the calibrated, thresholded decision step."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from pipelines.assemble import make_pipeline, parse_feature_sets
from pipelines.decision import DecisionClassifier
from pipelines.metrics import youden_threshold
from xray_features.dataset import make_folds

from .conftest import phantom, pneumonia_phantom, write_image


def test_parse_feature_sets():
    assert parse_feature_sets("hog,cnn,cnn+hog, lbp+hog+cnn") == ["hog", "cnn", "hog+cnn",
                                                                   "hog+lbp+cnn"]
    assert parse_feature_sets("cnn160+hog") == ["hog+cnn160"]
    with pytest.raises(ValueError, match="sift"):
        parse_feature_sets("hog+sift")


def _toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 5)) + y[:, None] * 1.2
    groups = np.arange(n) // 2
    return X, y, groups


def test_out_of_fold_predictions_come_from_models_that_never_saw_them():
    X, y, groups = _toy()
    folds = make_folds(y, groups, n_splits=4, seed=0)
    clf = DecisionClassifier(LogisticRegression(), cv=folds, calibration=None).fit(X, y)
    for k, (train, test) in enumerate(folds):
        model = LogisticRegression().fit(X[train], y[train])
        np.testing.assert_allclose(clf.oof_proba_[test], model.predict_proba(X[test])[:, 1])
        assert np.all(clf.oof_fold_[test] == k)


def test_threshold_is_youden_on_calibrated_oof_and_predict_uses_it():
    X, y, groups = _toy()
    folds = make_folds(y, groups, n_splits=4, seed=0)
    clf = DecisionClassifier(LogisticRegression(), cv=folds, threshold_rule="youden").fit(X, y)
    assert clf.threshold_ == pytest.approx(youden_threshold(y, clf.oof_proba_))
    p = clf.predict_proba(X)[:, 1]
    np.testing.assert_array_equal(clf.predict(X), (p >= clf.threshold_).astype(int))
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1.0)
    # calibration is monotone: it never reorders the head's scores
    raw = clf.estimator_.predict_proba(X)[:, 1]
    assert np.all(np.diff(p[np.argsort(raw)]) >= -1e-12)


def test_fixed_threshold_rule():
    X, y, _ = _toy()
    clf = DecisionClassifier(LogisticRegression(), cv=3, threshold_rule="0.3").fit(X, y)
    assert clf.threshold_ == 0.3


def test_rethreshold_equals_fitting_with_that_rule_and_keeps_the_models():
    X, y, groups = _toy()
    folds = make_folds(y, groups, n_splits=4, seed=0)
    direct = DecisionClassifier(LogisticRegression(), cv=folds,
                                threshold_rule="sensitivity:0.95").fit(X, y)
    clf = DecisionClassifier(LogisticRegression(), cv=folds, threshold_rule="youden").fit(X, y)
    coef = clf.estimator_.coef_.copy()
    assert clf.threshold_ != direct.threshold_  # youden, before
    assert clf.rethreshold(y, "sensitivity:0.95") is clf
    assert clf.threshold_ == direct.threshold_ and clf.threshold_rule == "sensitivity:0.95"
    np.testing.assert_array_equal(clf.estimator_.coef_, coef)
    np.testing.assert_array_equal(clf.predict(X), direct.predict(X))
    with pytest.raises(ValueError, match="labels"):
        clf.rethreshold(y[:-1], "youden")


def test_full_pipeline_clones_and_pickles(tmp_path):
    paths, labels = [], []
    for i in range(12):
        paths.append(str(write_image(tmp_path / f"n{i}.png", phantom(96, seed=i))))
        paths.append(str(write_image(tmp_path / f"p{i}.png", pneumonia_phantom(96, seed=i))))
        labels += [0, 1]
    pipeline = make_pipeline("hog+lbp", "logreg", cv=3)
    twin = clone(pipeline)
    assert twin.get_params()["classifier__threshold_rule"] == "sensitivity:0.95"
    pipeline.fit(paths, labels)
    restored = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(restored.predict_proba(paths), pipeline.predict_proba(paths))
    assert np.mean(pipeline.predict(paths) == np.array(labels)) > 0.9


def test_parallel_fold_fits_match_serial_ones():
    X, y, groups = _toy()
    folds = make_folds(y, groups, n_splits=4, seed=0)
    serial = DecisionClassifier(LogisticRegression(), cv=folds).fit(X, y)
    parallel = DecisionClassifier(LogisticRegression(), cv=folds, n_jobs=2).fit(X, y)
    np.testing.assert_allclose(parallel.oof_proba_, serial.oof_proba_, rtol=1e-10)
    assert parallel.threshold_ == pytest.approx(serial.threshold_)
    np.testing.assert_allclose(parallel.predict_proba(X), serial.predict_proba(X), rtol=1e-10)


def test_augmented_rows_train_only_the_folds_that_hold_their_source():
    X, y, groups = _toy()
    folds = make_folds(y, groups, n_splits=4, seed=0)
    rng = np.random.default_rng(1)
    source = rng.integers(0, len(y), 60)
    X_aug = X[source] + rng.normal(0, 0.5, (60, X.shape[1]))
    y_aug = 1 - y[source]  # poisoned labels: they must change only training parts
    clf = DecisionClassifier(LogisticRegression(), cv=folds, calibration=None, n_jobs=2).fit(
        X, y, X_aug=X_aug, y_aug=y_aug, aug_source=source)
    for train, test in folds:
        rows = np.isin(source, train)
        assert not np.isin(source[rows], test).any()
        model = LogisticRegression().fit(np.vstack([X[train], X_aug[rows]]),
                                         np.concatenate([y[train], y_aug[rows]]))
        np.testing.assert_allclose(clf.oof_proba_[test], model.predict_proba(X[test])[:, 1])
    final = LogisticRegression().fit(np.vstack([X, X_aug]), np.concatenate([y, y_aug]))
    np.testing.assert_allclose(clf.estimator_.coef_, final.coef_)
    with pytest.raises(ValueError, match="together"):
        DecisionClassifier(LogisticRegression(), cv=folds).fit(X, y, X_aug=X_aug)
    with pytest.raises(ValueError, match="index rows"):
        DecisionClassifier(LogisticRegression(), cv=folds).fit(
            X, y, X_aug=X_aug, y_aug=y_aug, aug_source=source + len(y))


def test_default_threshold_keeps_95_percent_of_out_of_fold_pneumonia():
    X, y, groups = _toy()
    folds = make_folds(y, groups, n_splits=4, seed=0)
    clf = DecisionClassifier(LogisticRegression(), cv=folds).fit(X, y)
    assert clf.threshold_rule == "sensitivity:0.95"
    positives = clf.oof_proba_[y == 1]
    assert np.mean(positives >= clf.threshold_) >= 0.95
    # the highest such threshold: the next positive score up leaves fewer than 95 %
    above = positives[positives > clf.threshold_]
    assert len(above) and np.mean(positives >= above.min()) < 0.95
