"""`python -m pipelines.export` and scoring from the export folder (no unpickling).

Parity: the export route must give the joblib route's probabilities within
1e-5 and the same labels, for a logistic-regression and an XGBoost head (an
XGBoost head fitted on imbalanced labels, so a converter that drops
base_score would be caught). The `data` tests repeat it on site_val and check
that `pipelines.run` is deterministic on the real data.
"""

import csv
import json
import pickle

import joblib
import numpy as np
import pytest

from pipelines import export, score
from pipelines.assemble import make_pipeline
from pipelines.onnx_model import MANIFEST, load_onnx_model
from pipelines.persist import ModelFileError, load_model, save_model
from xray_features.cnn import MODELS_DIR, PACKAGED_SHA256
from xray_features.dataset import index_dataset
from xray_features.io import read_xray

TOLERANCE = 1e-5


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _fit_saved(tmp_path_factory, synthetic_data, feature_set, head, n_normal):
    """A small pipeline fitted on the synthetic train set, saved with save_model."""
    train = index_dataset(synthetic_data / "train")
    normal = [i for i, label in enumerate(train.labels) if label == 0][:n_normal]
    keep = sorted(normal + [i for i, label in enumerate(train.labels) if label == 1])
    paths = [train.paths[i] for i in keep]
    labels = np.asarray(train.labels)[keep]
    model = make_pipeline(feature_set, head, cv=3).fit(paths, labels)
    path = tmp_path_factory.mktemp("fitted") / f"{feature_set}-{head}.joblib"
    save_model(model, path, {"feature_set": feature_set, "head": head,
                             "threshold": model.steps[-1][1].threshold_})
    return path


@pytest.fixture(scope="module")
def imbalanced_xgb(tmp_path_factory, synthetic_data):
    # 15 pneumonia vs ~5 normal: XGBoost's fitted base_score is far from 0.5
    return _fit_saved(tmp_path_factory, synthetic_data, "hog", "xgb", n_normal=5)


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory, synthetic_data):
    return _fit_saved(tmp_path_factory, synthetic_data, "hog+cnn", "logreg", n_normal=15)


def _test_paths(synthetic_data):
    return sorted(str(p) for p in (synthetic_data / "test").rglob("*.png"))


def _parity(model_path, out_dir, paths):
    """Export, then compare the two routes on ``paths``; returns the max |dP|."""
    assert export.main(["--model", str(model_path), "--out", str(out_dir)]) == 0
    joblib_model, _ = load_model(model_path)
    onnx_model, _ = load_onnx_model(out_dir)
    images = [read_xray(p) for p in paths]
    p_joblib = joblib_model[1:].predict_proba(images)[:, 1]
    p_onnx = onnx_model[1:].predict_proba(images)[:, 1]
    diff = float(np.max(np.abs(p_joblib - p_onnx)))
    assert diff <= TOLERANCE, diff
    np.testing.assert_array_equal(joblib_model[1:].predict(images), onnx_model[1:].predict(images))
    return diff


@pytest.mark.parametrize("name", ["hog-logreg", "hog_lbp-xgb"])
def test_parity_on_synthetic_data(trained_run, synthetic_data, tmp_path, name):
    _parity(trained_run / "models" / f"{name}.joblib", tmp_path / "export",
            _test_paths(synthetic_data))


def test_parity_xgb_with_base_score_far_from_half(imbalanced_xgb, synthetic_data, tmp_path):
    model, _ = load_model(imbalanced_xgb)
    config = json.loads(model.steps[-1][1].estimator_.get_booster().save_config())
    raw = json.loads(config["learner"]["learner_model_param"]["base_score"])
    base_score = float(raw[0] if isinstance(raw, list) else raw)  # XGBoost 3: "[7.5E-1]"
    assert abs(base_score - 0.5) > 0.15  # else this test could not see a lost base_score
    _parity(imbalanced_xgb, tmp_path / "export", _test_paths(synthetic_data))


def test_export_refuses_a_converter_that_drops_base_score(imbalanced_xgb, tmp_path, monkeypatch):
    from onnxmltools.convert.xgboost.operator_converters import XGBoost as converter

    real = converter.get_xgb_params
    monkeypatch.setattr(converter, "get_xgb_params",
                        lambda node: {**real(node), "base_score": [0.5]})  # the old bug
    model, metadata = load_model(imbalanced_xgb)
    with pytest.raises(export.ExportError, match="base_score"):
        export.export_model(model, metadata, tmp_path / "export")
    assert not (tmp_path / "export" / MANIFEST).exists()


def test_cnn_export_copies_the_embedder(cnn_model, synthetic_data, tmp_path):
    out = tmp_path / "export"
    _parity(cnn_model, out, _test_paths(synthetic_data)[:6])
    spec = json.loads((out / MANIFEST).read_text())
    packaged = PACKAGED_SHA256["efficientnet_lite0_embedder.onnx"]
    assert spec["files"]["embedder.onnx"] == packaged
    assert [s["class"] for s in spec["pipeline"]["features"]] == ["HOGFeatures", "OnnxEmbedder"]
    assert (out / "embedder.onnx").read_bytes() == (MODELS_DIR /
                                                    "efficientnet_lite0_embedder.onnx").read_bytes()


def test_score_cli_with_export_folder_unpickles_nothing(trained_run, synthetic_data, tmp_path,
                                                        monkeypatch):
    model_path = trained_run / "models" / "hog-xgb.joblib"
    out_dir = tmp_path / "export"
    assert export.main(["--model", str(model_path), "--out", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["head.onnx", "model.json"]
    inputs = [str(synthetic_data / "test"), str(tmp_path / "missing.png")]
    assert score.main(inputs + ["--model", str(model_path), "--out", str(tmp_path / "a.csv"),
                                "--quiet"]) == score.EXIT_SOME_FAILED

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the export route must not unpickle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (joblib, "load")):
        monkeypatch.setattr(module, name, no_unpickling)
    assert score.main(inputs + ["--model", str(out_dir), "--out", str(tmp_path / "b.csv"),
                                "--quiet"]) == score.EXIT_SOME_FAILED
    a, b = _rows(tmp_path / "a.csv"), _rows(tmp_path / "b.csv")
    assert len(a) == len(b) == 13 and b[-1]["status"] == "error"
    for row_a, row_b in zip(a, b):  # the same but for the model id (the joblib's, model.json's)
        assert {k: v for k, v in row_a.items() if k not in ("probability", "model")} == \
            {k: v for k, v in row_b.items() if k not in ("probability", "model")}
        assert (row_a["model"], row_b["model"]) == (score.model_id(score.model_sha256(model_path)),
                                                    score.model_id(score.model_sha256(out_dir)))
        if row_a["status"] == "ok":
            assert abs(float(row_a["probability"]) - float(row_b["probability"])) <= 2e-6


@pytest.fixture
def exported(trained_run, tmp_path):
    out = tmp_path / "export"
    assert export.main(["--model", str(trained_run / "models" / "hog_lbp-logreg.joblib"),
                        "--out", str(out)]) == 0
    return out


def _edit_manifest(folder, change):
    spec = json.loads((folder / MANIFEST).read_text())
    change(spec)
    (folder / MANIFEST).write_text(json.dumps(spec))


def test_tampered_head_is_refused(exported, tmp_path, capsys):
    data = bytearray((exported / "head.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (exported / "head.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="head.onnx: sha256 .* does not match"):
        load_onnx_model(exported)
    assert score.main([str(tmp_path), "--model", str(exported), "--out",
                       str(tmp_path / "s.csv"), "--quiet"]) == score.EXIT_USAGE
    assert "does not match" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda s: s["pipeline"]["preprocess"][0].update({"class": "Pipeline"}), "not allowed"),
    (lambda s: s["pipeline"]["features"][0].update({"class": "posix.system"}), "not allowed"),
    (lambda s: s["pipeline"]["read"]["params"].update({"evil": 1}), "unknown parameter"),
    (lambda s: s["pipeline"]["read"]["params"].update({"max_pixels": {"x": 1}}), "plain JSON"),
    (lambda s: s["files"].update({"../head.onnx": "0" * 64}), "bare name"),
    (lambda s: s["files"].update({"extra.onnx": "0" * 64}), "missing"),
    (lambda s: s.update({"format": "xray-hybrid-onnx/999"}), "manifest"),
    (lambda s: s["head"].update({"n_features": 7}), "input width"),
])
def test_manifest_is_whitelisted(exported, change, message):
    _edit_manifest(exported, change)
    with pytest.raises(ModelFileError, match=message):
        load_onnx_model(exported)


def test_export_cli_errors(tmp_path, capsys):
    assert export.main(["--model", str(tmp_path / "none.joblib"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


# ---- on the real data (XRAY_DATA); about 90 s on 2 busy cores --------------------------------

RUN_ARGS = ["--limit", "500", "--features", "hog", "--heads", "logreg,xgb", "--cv", "3",
            "--n-boot", "20", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def data_runs(data_root, tmp_path_factory):
    """Two identical `pipelines.run` on 500 training images, sharing a fresh cache."""
    from pipelines import run

    base = tmp_path_factory.mktemp("data_runs")
    cache = base / "cache"
    for name, extra in (("a", []), ("b", ["--no-save"])):
        code = run.main(RUN_ARGS + extra + ["--data", str(data_root), "--out", str(base / name),
                                            "--cache-dir", str(cache)])
        assert code == 0
    return base


@pytest.mark.data
def test_run_is_deterministic_on_real_data(data_runs):
    a, b = (json.loads((data_runs / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["n_train"] == b["n_train"] and 400 <= a["n_train"] <= 600
    for name in ("hog/logreg", "hog/xgb", "baseline/cnn-probe"):
        assert a["models"][name]["cv"] == b["models"][name]["cv"], name
    assert a["per_fold"] == b["per_fold"]


@pytest.mark.data
@pytest.mark.parametrize("head", ["logreg", "xgb"])
def test_parity_on_site_val(data_runs, data_root, tmp_path, head):
    site_val = data_root / "site_val"
    if not site_val.is_dir():
        pytest.skip(f"{site_val} is missing")
    paths = sorted(str(p) for p in site_val.rglob("*.jpeg"))
    assert len(paths) > 100
    diff = _parity(data_runs / "a" / "models" / f"hog-{head}.joblib", tmp_path / "export", paths)
    print(f"site_val parity hog/{head}: max |dP| = {diff:.3g} over {len(paths)} images")
