"""`pipelines.api`: the Python API trains what `pipelines.run` trains."""

import csv
import json
import warnings

import numpy as np
import pytest

from pipelines import run
from pipelines.api import HybridClassifier, XrayModel, load, load_default
from pipelines.persist import load_model
from xray_features.dataset import index_dataset
from xray_features.io import read_xray

from .conftest import phantom
from .test_subtype_run import subtype_run  # noqa: F401,F811  (the fixture)


def _training(synthetic_data):
    return run.load_training_index(synthetic_data)


@pytest.fixture(scope="module")
def fitted(synthetic_data):
    """The API's hog/logreg, with the run's settings (3 folds, seed 0)."""
    train = _training(synthetic_data)
    names = np.array(["NORMAL", "PNEUMONIA"])[train.labels]
    return HybridClassifier(features="hog", head="logreg", cv=3).fit(
        train.paths, names, groups=train.groups)


@pytest.mark.parametrize("head", ["logreg", "xgb"])
def test_api_trains_the_model_the_cli_trains(trained_run, synthetic_data, fitted, head):
    """Same folds, copies, calibration and threshold: the same out-of-fold
    probabilities, CV figures and final model as `python -m pipelines.run`."""
    train = _training(synthetic_data)
    clf = fitted if head == "logreg" else HybridClassifier(
        features="hog", head=head, cv=3).fit(train.paths, train.labels, groups=train.groups)
    results = json.loads((trained_run / "metrics.json").read_text())
    cv = results["models"][f"hog/{head}"]["cv"]
    assert clf.threshold_ == pytest.approx(cv["threshold"], abs=1e-12)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "brier"):
        assert clf.cv_metrics_[key] == pytest.approx(cv[key], abs=1e-12), key
    with open(trained_run / "predictions_cv.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == list(train.paths)
    np.testing.assert_allclose(clf.oof_proba_, [float(r[f"hog/{head}"]) for r in rows],
                               atol=1e-12)
    saved, _ = load_model(trained_run / "models" / f"hog-{head}.joblib")
    test = list(index_dataset(synthetic_data / "test").paths)
    np.testing.assert_allclose(clf.predict_proba(test), saved.predict_proba(test), atol=1e-12)


def test_without_the_copies_the_model_differs(synthetic_data, fitted):
    """The copies are what the API adds over a plain `make_pipeline().fit`."""
    train = _training(synthetic_data)
    plain = HybridClassifier(features="hog", head="logreg", cv=3, augment="none").fit(
        train.paths, train.labels, groups=train.groups)
    assert not np.allclose(plain.oof_proba_, fitted.oof_proba_)


def test_classes_are_names_and_predict_gives_names(synthetic_data, fitted):
    assert list(fitted.classes_) == ["NORMAL", "PNEUMONIA"]
    test = index_dataset(synthetic_data / "test")
    predicted = fitted.predict(test.paths)
    assert set(predicted) <= {"NORMAL", "PNEUMONIA"}
    proba = fitted.predict_proba(test.paths)[:, 1]
    np.testing.assert_array_equal(predicted == "PNEUMONIA", proba >= fitted.threshold_)


def test_predict_proba_on_arrays_matches_paths(synthetic_data, fitted):
    paths = list(index_dataset(synthetic_data / "test").paths)
    images = [read_xray(p) for p in paths]
    np.testing.assert_allclose(fitted.predict_proba(images), fitted.predict_proba(paths))
    as_uint8 = [np.round(i * 255).astype(np.uint8) for i in images]
    np.testing.assert_allclose(fitted.predict_proba(as_uint8), fitted.predict_proba(paths),
                               atol=1e-6)
    with pytest.raises(ValueError, match="not a mix"):
        fitted.predict_proba([paths[0], images[0]])


def test_fit_on_arrays_matches_fit_on_paths(synthetic_data, fitted):
    train = _training(synthetic_data)
    images = [read_xray(p) for p in train.paths]
    clf = HybridClassifier(features="hog", head="logreg", cv=3).fit(
        images, train.labels, groups=train.groups)
    np.testing.assert_allclose(clf.oof_proba_, fitted.oof_proba_, atol=1e-9)


def test_missing_groups_warn_and_given_groups_do_not(synthetic_data):
    train = _training(synthetic_data)
    clf = HybridClassifier(features="hog", head="logreg", cv=3, augment="none")
    with pytest.warns(UserWarning, match="groups"):
        clf.fit(train.paths, train.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.fit(train.paths, train.labels, groups=train.groups)
    for train_rows, test_rows in clf.folds_:
        assert not set(train.groups[train_rows]) & set(train.groups[test_rows])


def test_unclear_labels_are_clear_errors(synthetic_data):
    train = _training(synthetic_data)
    clf = HybridClassifier(features="hog", head="logreg", cv=3, augment="none")
    with pytest.raises(ValueError, match="unknown class name"):
        clf.fit(train.paths, ["normal"] * len(train.paths), groups=train.groups)
    with pytest.raises(ValueError, match="0 .NORMAL. or 1"):
        clf.fit(train.paths, np.full(len(train.paths), 2), groups=train.groups)


def test_init_only_stores_params_and_clone_works():
    from sklearn.base import clone

    clf = HybridClassifier(features="bogus", head="nope", cv=7)
    assert clf.get_params()["features"] == "bogus"
    assert clone(clf).get_params()["cv"] == 7


def test_save_then_load_and_score(fitted, synthetic_data, tmp_path):
    path = fitted.save(tmp_path / "m.joblib")
    model = load(path)
    assert isinstance(model, XrayModel) and model.outputs == ["NORMAL", "PNEUMONIA"]
    paths = list(index_dataset(synthetic_data / "test").paths)
    np.testing.assert_allclose(model.predict_proba(paths), fitted.predict_proba(paths))
    assert list(model.predict(paths)) == list(fitted.predict(paths))
    assert model.features(paths).shape == (len(paths), fitted.n_features_in_)
    np.testing.assert_array_equal(fitted.features_of(paths), model.features(paths))
    names = model.feature_names_out()
    assert len(names) == fitted.n_features_in_ and names[0].startswith("hog")


def test_load_default_gives_embeddings_and_names(synthetic_data):
    model = load_default()
    paths = list(index_dataset(synthetic_data / "test").paths)[:3]
    assert model.outputs == ["NORMAL", "PNEUMONIA"]
    proba = model.predict_proba(paths)
    assert proba.shape == (3, 2) and np.allclose(proba.sum(axis=1), 1)
    embedding = model.features(paths)
    features = model.pipeline.named_steps["features"]
    if [n for n, _ in features.transformer_list] == ["cnn_score"]:  # a fine-tuned CNN
        width = 1280  # its penultimate layer
    else:  # a feature-set model: the vector its head sees
        width = features.transform(model._preprocessed(paths)).shape[1]
    assert embedding.shape == (3, width) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all() and not np.allclose(embedding[0], embedding[1])


def test_a_cnn_models_features_are_its_penultimate_layer():
    """For a fine-tuned CNN saved as a pipeline, `features` is its 1,280-d
    embedding output, not the one-column score its head sees."""
    from pipelines.assemble import make_cnn_pipeline
    from tests.conftest import phantom

    pipeline = make_cnn_pipeline("cnn_ft224_cs_acq_cs.onnx")
    y = np.array([0, 1] * 10)
    oof = np.clip(0.1 + 0.8 * y + np.random.default_rng(0).normal(0, 0.05, 20), 0, 1)
    pipeline.steps[-1][1].fit(oof[:, None], y, oof_proba=oof)
    model = XrayModel(pipeline, {})
    images = [phantom(224, seed=i) for i in range(3)]
    embedding = model.features(images)
    assert embedding.shape == (3, 1280) and np.isfinite(embedding).all()
    assert len(model.feature_names_out()) == 1280
    assert model.predict_proba(images).shape == (3, 2)


def test_features_of_a_packaged_cnn_at_its_own_size_or_a_clear_error():
    """features() reads a fine-tuned network's embedding at the network's input
    size (128 px here), and names the problem for a network without one."""
    from pipelines.api import XrayModel
    from pipelines.assemble import make_cnn_pipeline

    def fitted(name):
        pipeline = make_cnn_pipeline(name)
        oof = np.array([0.1, 0.3, 0.7, 0.9])
        pipeline.steps[-1][1].fit(oof[:, None], [0, 0, 1, 1], oof_proba=oof)
        return XrayModel(pipeline, {})

    images = [phantom(96, seed=s) for s in range(2)]
    lite0 = fitted("cnn_lite0_128_aug_e3.onnx")
    embeddings = lite0.features(images)
    assert embeddings.shape == (2, 1280)
    assert len(lite0.feature_names_out()) == 1280
    small = fitted("cnn_small64_noaug.onnx")
    with pytest.raises(ValueError, match="no 'embedding' output"):
        small.features(images)


def test_load_refuses_a_three_class_model(subtype_run):  # noqa: F811
    from pipelines.api import load

    _, out = subtype_run
    with pytest.raises(ValueError, match="three-class model"):
        load(out / "models" / "hog-logreg.joblib")
