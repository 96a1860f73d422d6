"""A saved three-class pipeline through `pipelines.score`: one probability
column per class and the predicted class; binary scoring unchanged."""

import csv

import numpy as np

from pipelines import score
from pipelines.persist import load_model
from xray_features.dataset import index_dataset

from .test_subtype_run import subtype_run  # noqa: F401  (the fixture)


def test_saved_model_classes_and_scoring_columns(subtype_run, tmp_path):
    data, out = subtype_run
    model, _ = load_model(out / "models" / "hog-logreg.joblib")
    test = index_dataset(data / "test")
    paths = list(test.paths) + [str(tmp_path / "missing.png")]
    csv_path = tmp_path / "s.csv"
    code = score.main(paths + ["--model", str(out / "models" / "hog-logreg.joblib"),
                               "--out", str(csv_path), "--quiet"])
    assert code == score.EXIT_SOME_FAILED  # the missing file
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "p_normal", "p_bacterial", "p_viral", "prediction",
                             "status", "error"]
    assert [r["path"] for r in rows] == paths
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(test)
    proba = model.predict_proba(list(test.paths))
    np.testing.assert_allclose([[float(r[c]) for c in ("p_normal", "p_bacterial", "p_viral")]
                                for r in ok], proba, atol=1e-6)
    assert [r["prediction"] for r in ok] == list(model.predict(list(test.paths)))
    assert rows[-1]["status"] == "error" and rows[-1]["p_normal"] == ""


def test_binary_scoring_columns_unchanged(trained_run, synthetic_data, tmp_path):
    csv_path = tmp_path / "b.csv"
    paths = [str(p) for p in sorted((synthetic_data / "test").rglob("*.png"))[:2]]
    assert score.main(paths + ["--model", str(trained_run / "models" / "hog-logreg.joblib"),
                               "--out", str(csv_path), "--quiet"]) == 0
    with open(csv_path, newline="") as handle:
        assert list(next(csv.DictReader(handle))) == list(score.COLUMNS)
