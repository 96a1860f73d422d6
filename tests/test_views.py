"""Test-time views: ViewFeatures' layout, DecisionClassifier's averaging, and
a `pipelines.run --tta` model end to end."""

import json
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from pipelines import run
from pipelines.calibrate import head_scores
from pipelines.decision import DecisionClassifier
from pipelines.export import ExportError, export_model
from pipelines.persist import load_model
from pipelines.score import score_paths
from xray_features import HOGFeatures
from xray_features.dataset import index_dataset
from xray_features.preprocess import BorderCrop, default_preprocessor
from xray_features.views import ViewFeatures, zoom_views

from .conftest import phantom


def _logit(p):
    return np.log(p / (1 - p))


def test_view_features_stack_each_views_features_in_order():
    images = [phantom(120, seed=s) for s in range(3)]
    pre, hog = default_preprocessor(), HOGFeatures(image_size=32)
    views = ViewFeatures(pre, hog, [BorderCrop(0.05), BorderCrop(0.1)])
    got = views.fit(images).transform(images)
    expected = np.hstack([hog.transform(pre.transform(images))]
                         + [hog.transform(pre.transform(v.transform(images)))
                            for v in (BorderCrop(0.05), BorderCrop(0.1))])
    np.testing.assert_array_equal(got, expected)
    assert views.n_views == 3 and got.shape[1] == 3 * hog.transform(pre.transform(images)).shape[1]
    for twin in (clone(views), pickle.loads(pickle.dumps(views))):
        np.testing.assert_array_equal(twin.transform(images), got)


def _data(seed=0, n=120, d=5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + 0.8 * y[:, None]
    return X, y


def test_identical_views_change_nothing():
    X, y = _data()
    one = DecisionClassifier(LogisticRegression(), cv=4).fit(X, y)
    two = DecisionClassifier(LogisticRegression(), cv=4, n_views=2).fit(np.hstack([X, X]), y)
    np.testing.assert_allclose(two.oof_proba_, one.oof_proba_, atol=1e-9)
    np.testing.assert_allclose(two.predict_proba(np.hstack([X, X])), one.predict_proba(X),
                               atol=1e-9)
    assert two.threshold_ == pytest.approx(one.threshold_)


def test_scores_are_the_mean_logit_over_views_out_of_fold_too():
    X, y = _data(1)
    shifted = X + 0.3
    folds = [(np.flatnonzero(np.arange(len(y)) % 3 != k), np.flatnonzero(np.arange(len(y)) % 3 == k))
             for k in range(3)]
    clf = DecisionClassifier(LogisticRegression(), cv=folds, n_views=2).fit(
        np.hstack([X, shifted]), y)
    for train, test in folds:
        model = LogisticRegression().fit(X[train], y[train])  # trained on the first view only
        mean = (_logit(model.predict_proba(X[test])[:, 1])
                + _logit(model.predict_proba(shifted[test])[:, 1])) / 2
        np.testing.assert_allclose(_logit(clf.raw_oof_proba_[test]), mean, atol=1e-9)
    final = LogisticRegression().fit(X, y)
    mean = (_logit(final.predict_proba(X)[:, 1]) + _logit(final.predict_proba(shifted)[:, 1])) / 2
    np.testing.assert_allclose(_logit(clf.raw_score(np.hstack([X, shifted]))), mean, atol=1e-9)
    with pytest.raises(ValueError, match="n_views=2"):
        DecisionClassifier(LogisticRegression(), cv=3, n_views=2).fit(X, y)  # 5 columns


@pytest.fixture(scope="module")
def tta_run(synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tta")
    code = run.main(["--data", str(synthetic_data), "--features", "hog", "--heads", "logreg",
                     "--cv", "3", "--n-boot", "20", "--quiet", "--tta",
                     "--eval-dir", str(synthetic_data / "test"), "--out", str(out),
                     "--cache-dir", str(out / "cache")])
    assert code == 0
    return out


def test_tta_model_scores_as_the_run_did(tta_run, synthetic_data):
    results = json.loads((tta_run / "metrics.json").read_text())
    assert results["tta"] is True
    model, metadata = load_model(tta_run / "models" / "hog-logreg.joblib")
    assert metadata["tta"] is True
    assert [name for name, _ in model.steps] == ["read", "features", "classifier"]
    assert model.steps[-1][1].n_views == 1 + len(zoom_views())
    test = index_dataset(synthetic_data / "test")
    predicted = model.predict(list(test.paths))
    assert np.mean(predicted == test.labels) == pytest.approx(
        results["models"]["hog/logreg"]["eval"]["accuracy"])
    raw = head_scores(model, test.paths)  # what pipelines.calibrate refits on
    np.testing.assert_allclose(model.steps[-1][1]._calibrate(raw),
                               model.predict_proba(list(test.paths))[:, 1])
    rows = score_paths(model, list(test.paths) + [str(tta_run / "metrics.json")])
    assert [r["status"] for r in rows] == ["ok"] * len(test.paths) + ["error"]
    np.testing.assert_allclose([float(r["probability"]) for r in rows[:-1]],
                               model.predict_proba(list(test.paths))[:, 1], atol=1e-6)
    with pytest.raises(ExportError, match="--tta"):
        export_model(model, metadata, tta_run / "export")


def test_a_classifier_pickled_before_views_existed_still_scores():
    X, y = _data(2)
    clf = DecisionClassifier(LogisticRegression(), cv=3).fit(X, y)
    expected = clf.predict_proba(X)
    del clf.__dict__["n_views"]  # the state an older version pickled
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), expected)
