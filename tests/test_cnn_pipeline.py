"""A pure CNN as a saved pipeline: read -> its preprocessing -> OnnxCNNScore ->
DecisionClassifier(ScoreHead(), cv="given"), scored, recalibrated and
exported like every other model."""

import csv
import json

import numpy as np
import pytest
from sklearn.base import clone

from pipelines import calibrate, export, score
from pipelines.assemble import cnn_preprocessor, make_cnn_pipeline
from pipelines.decision import DecisionClassifier, PlattCalibrator, ScoreHead
from pipelines.metrics import choose_threshold
from pipelines.onnx_model import load_onnx_model
from pipelines.persist import load_model, save_model
from xray_features.dataset import index_dataset
from xray_features.io import read_xray

from .test_cnn import _tiny_classifier


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_score_head_passes_the_probability_through():
    head = ScoreHead().fit(np.array([[0.1], [0.7]]), [0, 1])
    np.testing.assert_array_equal(head.predict_proba([[0.25], [1.5], [-1.0]]),
                                  [[0.75, 0.25], [0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(head.predict([[0.49], [0.5]]), [0, 1])
    assert list(head.classes_) == [0, 1] and head.n_features_in_ == 1
    with pytest.raises(ValueError, match="one column"):
        ScoreHead().fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="0 .normal. or 1"):
        ScoreHead().fit(np.zeros((2, 1)), [0, 2])


def test_given_out_of_fold_probabilities_fit_calibration_and_threshold():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    oof = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    fold = rng.integers(0, 5, 200)
    clf = DecisionClassifier(ScoreHead(), cv="given", threshold_rule="sensitivity:0.95")
    clf.fit(oof[:, None], y, oof_proba=oof, oof_fold=fold)
    expected = PlattCalibrator().fit(oof, y)
    np.testing.assert_allclose(clf.oof_proba_, expected.transform(oof))
    assert clf.threshold_ == choose_threshold(y, expected.transform(oof), "sensitivity:0.95")
    np.testing.assert_array_equal(clf.oof_fold_, fold)
    # scoring a new probability = the calibrated probability, thresholded
    p = np.array([0.2, 0.9])
    np.testing.assert_allclose(clf.predict_proba(p[:, None])[:, 1], expected.transform(p))
    # the rank order of the network is kept: calibration is monotone
    assert np.all(np.diff(clf.predict_proba(np.linspace(0, 1, 11)[:, None])[:, 1]) > 0)
    with pytest.raises(ValueError, match="oof_proba"):
        clone(clf).fit(oof[:, None], y)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        clone(clf).fit(oof[:, None], y, oof_proba=oof * 2)
    with pytest.raises(ValueError, match='cv="given"'):
        DecisionClassifier(ScoreHead(), cv=3).fit(oof[:, None], y, oof_proba=oof)


@pytest.fixture()
def tiny_cnn(tmp_path):
    """A tiny ONNX 'CNN' (p = sigmoid(2 * mean of the normalised image)) with
    the preprocessing sidecar every packaged CNN has."""
    path = _tiny_classifier(tmp_path / "tiny_cnn.onnx", size=16, channels=3)
    path.with_suffix(".preprocess.json").write_text('{"lung_crop": false, "resize_mode": "squash"}')
    return path


def _fitted_cnn_model(tiny_cnn, synthetic_data, tmp_path, rule="youden"):
    train = index_dataset(synthetic_data / "train")
    model = make_cnn_pipeline(tiny_cnn, rule)
    # the network's probabilities stand in for out-of-fold ones here
    raw = model[:-1].transform(train.paths)[:, 0].astype(float)
    model.steps[-1][1].fit(raw[:, None], train.labels, oof_proba=raw)
    path = tmp_path / "cnn.joblib"
    save_model(model, path, {"feature_set": "tiny_cnn", "head": "score",
                             "threshold": model.steps[-1][1].threshold_})
    return model, path, raw


def test_cnn_preprocessor_follows_the_sidecar(tmp_path, tiny_cnn):
    steps = [name for name, _ in cnn_preprocessor(tiny_cnn).steps]
    assert steps == ["clahe", "resize"]
    tiny_cnn.with_suffix(".preprocess.json").write_text('{"lung_crop": true, "resize_mode": "pad"}')
    pre = cnn_preprocessor(tiny_cnn)
    assert [name for name, _ in pre.steps] == ["clahe", "crop", "resize"]
    assert pre.named_steps["resize"].mode == "pad"
    tiny_cnn.with_suffix(".preprocess.json").unlink()
    with pytest.raises(FileNotFoundError, match="tiny_cnn.preprocess.json missing"):
        cnn_preprocessor(tiny_cnn)


def test_saved_cnn_pipeline_scores_like_the_network(tiny_cnn, synthetic_data, tmp_path):
    model, path, raw = _fitted_cnn_model(tiny_cnn, synthetic_data, tmp_path)
    decision = model.steps[-1][1]
    test = sorted(str(p) for p in (synthetic_data / "test").rglob("*.png"))
    out = tmp_path / "scores.csv"
    assert score.main([*test, "--model", str(path), "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["path"] for r in rows] == test and {r["status"] for r in rows} == {"ok"}
    network = model[:-1].transform(test)[:, 0]
    expected = decision.calibrator_.transform(network.astype(float))
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected, atol=1e-6)
    assert [r["prediction"] for r in rows] == [
        "PNEUMONIA" if p >= decision.threshold_ else "NORMAL" for p in expected]


def test_cnn_pipeline_exports_with_parity(tiny_cnn, synthetic_data, tmp_path):
    _, path, _ = _fitted_cnn_model(tiny_cnn, synthetic_data, tmp_path)
    out_dir = tmp_path / "export"
    assert export.main(["--model", str(path), "--out", str(out_dir)]) == 0
    spec = json.loads((out_dir / "model.json").read_text())
    assert spec["head"]["kind"] == "score" and "cnn.onnx" in spec["files"]
    joblib_model, _ = load_model(path)
    onnx_model, _ = load_onnx_model(out_dir)
    images = [read_xray(p) for p in sorted((synthetic_data / "test").rglob("*.png"))]
    p_joblib = joblib_model[1:].predict_proba(images)[:, 1]
    p_onnx = onnx_model[1:].predict_proba(images)[:, 1]
    assert np.max(np.abs(p_joblib - p_onnx)) <= 1e-5
    np.testing.assert_array_equal(joblib_model[1:].predict(images), onnx_model[1:].predict(images))


def test_cnn_pipeline_recalibrates_on_site_labels_and_prevalence(tiny_cnn, synthetic_data,
                                                                  tmp_path):
    model, path, _ = _fitted_cnn_model(tiny_cnn, synthetic_data, tmp_path)
    site = tmp_path / "site.joblib"
    assert calibrate.main(["--model", str(path), "--labelled-dir", str(synthetic_data / "test"),
                           "--out", str(site)]) == 0
    recalibrated, metadata = load_model(site)
    test = index_dataset(synthetic_data / "test")
    network = model[:-1].transform(test.paths)[:, 0].astype(float)
    expected = PlattCalibrator().fit(network, test.labels)
    np.testing.assert_allclose(recalibrated.steps[-1][1].calibrator_.transform(network),
                               expected.transform(network))
    assert metadata["site_calibration"]["n"] == len(test.paths)
    prior = tmp_path / "prior.joblib"
    assert calibrate.main(["--model", str(path), "--prevalence", "0.3", "--out", str(prior)]) == 0
    shifted, _ = load_model(prior)
    images = [read_xray(p) for p in test.paths]
    np.testing.assert_array_equal(shifted[1:].predict(images), model[1:].predict(images))


@pytest.mark.parametrize("packaged, network", [
    ("default_pipeline.joblib", "cnn_ft224_cs_acq_cs.int8.onnx"),
    ("default_pipeline_fp32.joblib", "cnn_ft224_cs_acq_cs.onnx")])
def test_packaged_default_is_regenerated_from_the_networks_out_of_fold_probabilities(
        packaged, network):
    """The default's calibration and threshold (and its fp32 twin's) are what
    the fp32 network's committed out-of-fold probabilities give under the
    stated rule (no data needed)."""
    from pipelines.baselines import OOF_DIR, read_oof

    model, metadata = load_model(packaged)
    assert metadata["threshold_rule"] == "sensitivity:0.95"
    assert metadata["network"] == network
    score_step = model.named_steps["features"].transformer_list[0][1]
    assert score_step.model_path == network  # portable: a packaged name
    rows = list(read_oof(OOF_DIR / "cnn_ft224_cs_acq_cs.csv").values())
    y = np.array([label for label, _, _ in rows])
    oof = np.array([proba for _, _, proba in rows])
    refit = DecisionClassifier(ScoreHead(), cv="given").fit(oof[:, None], y, oof_proba=oof)
    shipped = model.steps[-1][1]
    assert shipped.threshold_ == pytest.approx(refit.threshold_, abs=1e-12)
    assert shipped.threshold_ == pytest.approx(metadata["threshold"], abs=1e-12)
    probe = np.linspace(0.01, 0.99, 9)
    np.testing.assert_allclose(shipped.calibrator_.transform(probe),
                               refit.calibrator_.transform(probe), atol=1e-9)


@pytest.mark.data
def test_packaged_fp32_default_scores_site_val_as_its_network_did(data_root):
    """Golden values: the fp32 default's first steps give the network's saved
    site_val probabilities (written by its GPU study), and its labels follow.
    (The int8 default follows the fp32 one within `tests/test_quantized.py`'s
    tolerances.)"""
    from pipelines.baselines import OOF_DIR, saved_eval_scores

    model, _ = load_model("default_pipeline_fp32.joblib")
    paths = index_dataset(data_root).subset("site_val").paths[::6]
    saved = saved_eval_scores(OOF_DIR / "site_val" / "cnn_ft224_cs_acq_cs.csv", paths)
    raw = model[:-1].transform(paths)[:, 0]
    np.testing.assert_allclose(raw, saved, atol=3e-6)  # 6 decimals + static padding (2.4e-7)
    decision = model.steps[-1][1]
    expected = (decision.calibrator_.transform(saved) >= decision.threshold_).astype(int)
    np.testing.assert_array_equal(model.predict(paths), expected)


def test_a_packaged_network_is_stored_by_name_however_it_is_given(tmp_path, tiny_cnn):
    """A saved pipeline must work on another install: a packaged network given
    by its full path is stored by its bare name; a user's own file by its path."""
    from xray_features.cnn import MODELS_DIR

    def stored(model_path):
        return make_cnn_pipeline(model_path).named_steps["features"].transformer_list[0][1]

    name = "cnn_ft224_cs_acq_cs.onnx"
    assert stored(MODELS_DIR / name).model_path == name
    assert stored(name).model_path == name
    assert stored(tiny_cnn).model_path == str(tiny_cnn)
