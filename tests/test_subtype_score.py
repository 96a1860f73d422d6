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
                             "model", "status", "error", "sop_instance_uid",
                             "study_instance_uid", "accession_number"]
    assert {r["model"] for r in rows} == {
        score.model_id(score.model_sha256(out / "models" / "hog-logreg.joblib"))}
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


def test_three_class_scores_rerun_and_resume(subtype_run, tmp_path, capsys):
    """A three-class CSV is a score CSV: a rerun replaces it, --resume keeps its
    valid rows (with the model that wrote them) and rescores a hand-edited one."""
    data, out = subtype_run
    model = str(out / "models" / "hog-logreg.joblib")
    paths = sorted(str(p) for p in (data / "test").rglob("*.png"))
    csv_path = tmp_path / "s.csv"
    args = ["--model", model, "--out", str(csv_path), "--quiet"]
    assert score.main(paths[:4] + args) == 0
    assert score.main(paths[:4] + args) == 0  # a fresh run over its own CSV
    first = csv_path.read_text().splitlines()
    lines = list(first)
    cells = lines[2].split(",")
    cells[1:4] = ["0.9", "0.9", "0.9"]  # not a distribution: must be scored again
    lines[2] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert score.main(paths + args + ["--resume"]) == 0
    said = capsys.readouterr()
    assert "kept" in said.out + said.err
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == paths and {r["status"] for r in rows} == {"ok"}
    assert csv_path.read_text().splitlines()[:5] == first  # the edited row rescored as before
