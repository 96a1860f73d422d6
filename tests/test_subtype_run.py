"""`python -m pipelines.run --task subtype` end to end on a small synthetic
three-class set; `pipelines.calibrate` and `export` refuse its models."""

import json

import cv2
import numpy as np
import pytest

from pipelines import calibrate, export, run
from pipelines.persist import load_model
from pipelines.subtype import CLASSES, three_class_metrics
from xray_features.dataset import index_dataset

from .conftest import phantom, pneumonia_phantom, write_image


def viral_phantom(size=128, seed=0):
    """A phantom with a fine diffuse streaky texture over both lungs."""
    rng = np.random.default_rng(20_000 + seed)
    image = phantom(size, seed)
    lungs = (image < 0.4).astype(np.float32)
    stripes = 0.25 * (np.sin(np.arange(size) * rng.uniform(0.9, 1.1))[None, :] > 0)
    return np.clip(image + cv2.GaussianBlur(lungs, (0, 0), 2) * stripes, 0, 1)


def make_three_class_set(root, n_per_class, start=0, split=None):
    base = root / split if split else root
    for i in range(start, start + n_per_class):
        write_image(base / "NORMAL" / f"IM-{i:04d}-0001.png", phantom(128, seed=i))
        write_image(base / "PNEUMONIA" / f"person{i}_bacteria_1.png", pneumonia_phantom(128, i))
        write_image(base / "PNEUMONIA" / f"person{i}_virus_1.png", viral_phantom(128, i))
    return root


@pytest.fixture(scope="module")
def subtype_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("three")
    make_three_class_set(data, 12, split="train")
    make_three_class_set(data, 4, start=100, split="test")
    write_image(data / "test" / "PNEUMONIA" / "film 1.png", viral_phantom(128, 99))
    out = tmp_path_factory.mktemp("subtype_run")
    code = run.main(["--task", "subtype", "--data", str(data), "--features", "hog,hog+lbp",
                     "--heads", "logreg,xgb", "--cv", "3", "--n-boot", "30", "--quiet",
                     "--eval-dir", str(data / "test"), "--out", str(out),
                     "--cache-dir", str(out / "cache")])
    assert code == 0
    return data, out


def test_metrics_json_contract(subtype_run):
    _, out = subtype_run
    results = json.loads((out / "metrics.json").read_text())
    assert results["task"] == "subtype" and results["classes"] == list(CLASSES)
    assert results["environment"]["versions"]["scikit-learn"]  # versions and commit recorded
    assert results["eval_counts"] == {"NORMAL": 4, "BACTERIAL": 4, "VIRAL": 4, "unknown": 0}
    assert [p.rsplit("/", 1)[1] for p in results["unknown_subtype_left_out"]["evaluation"]] == [
        "film 1.png"]
    assert "training" not in results["unknown_subtype_left_out"]
    assert set(results["models"]) == {"hog/logreg", "hog/xgb", "hog+lbp/logreg",
                                      "hog+lbp/xgb", "baseline/cnn-probe"}
    for name, model in results["models"].items():
        for part, n in (("cv", 36), ("eval", 12)):
            bv = model[part]["bacterial_vs_viral"]
            for key in ("auc", "accuracy", "sensitivity", "specificity", "n"):
                assert key in bv, (name, part, key)
            assert bv["n"] == 2 * n // 3  # the pneumonia images only
            assert model[part]["normal_vs_pneumonia"]["n"] == n
            assert np.sum(model[part]["confusion"]) == n
            assert set(model[part]["auc_per_class"]) == set(CLASSES)
    assert results["threshold_rule"].startswith(run.build_parser().get_default("threshold_rule"))
    assert results["selected"] in results["models"]
    assert not results["selected"].startswith("baseline/")
    assert results["models"]["hog/logreg"]["cv"]["macro_auc"] > 0.9
    for name in ("roc_cv_normal.png", "roc_eval_viral.png", "roc_cv_bacterial_vs_viral.png",
                 "confusion_eval.png", "report.md", "report.html", "predictions_cv.csv"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Kermany et al. 2018" in report and "0.907" in report


def test_three_class_metrics_known_values():
    codes = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.3, .4, .3], [.1, .8, .1],
                      [.2, .5, .3], [.1, .3, .6], [.1, .6, .3]])
    m = three_class_metrics(codes, proba, np.arange(6), 0.5, 0.5, n_boot=20)
    # P(pneumonia) .2 .7 .9 .8 .9 .9 -> N P P P P P; P(viral | pneu) .5 3/7 1/9 3/8 2/3 1/3
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 1, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    bv = m["bacterial_vs_viral"]
    assert (bv["n"], bv["sensitivity"], bv["specificity"], bv["accuracy"]) == (4, .5, 1.0, .75)
    assert bv["auc"] == pytest.approx(0.75)
    assert m["normal_vs_pneumonia"]["specificity"] == 0.5
    assert m["auc_per_class"]["NORMAL"] == 1.0


def test_saved_model_is_a_three_class_pipeline(subtype_run):
    data, out = subtype_run
    model, metadata = load_model(out / "models" / "hog-logreg.joblib")
    assert metadata["task"] == "subtype" and metadata["classes"] == list(CLASSES)
    assert list(model.steps[-1][1].classes_) == list(CLASSES)
    assert [name for name, _ in model.steps] == ["read", "preprocess", "features", "classifier"]
    test = index_dataset(data / "test")
    assert set(model.predict(list(test.paths))) <= set(CLASSES)


def test_subtype_refuses_tta(tmp_path, capsys):
    assert run.main(["--task", "subtype", "--tta", "--data", str(tmp_path), "--quiet"]) == 2
    assert "--tta" in capsys.readouterr().err


def test_calibrate_and_export_refuse_a_three_class_model(subtype_run, tmp_path, capsys):
    data, out = subtype_run
    model = str(out / "models" / "hog-logreg.joblib")
    assert calibrate.main(["--model", model, "--labelled-dir", str(data / "test"),
                           "--out", str(tmp_path / "c.joblib")]) == 2
    assert export.main(["--model", model, "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("three-class") == 2
    assert not (tmp_path / "c.joblib").exists() and not (tmp_path / "onnx").exists()


def test_prediction_tables_hold_the_three_class_truth(subtype_run):
    """predictions_cv.csv / predictions_eval.csv of a three-class run give each
    film's class code (0 NORMAL, 1 BACTERIAL, 2 VIRAL), not the binary label."""
    from pipelines.report import read_predictions

    data, out = subtype_run
    for table, index in (("predictions_cv.csv", index_dataset(data).subset("train")),
                         ("predictions_eval.csv", index_dataset(data / "test"))):
        paths, truth, _, _ = read_predictions(out / table)
        codes = dict(zip(index.paths, index.subtype_labels))
        assert set(truth) == {0, 1, 2}
        np.testing.assert_array_equal(truth, [codes[p] for p in paths])
