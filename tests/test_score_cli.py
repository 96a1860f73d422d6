"""`python -m pipelines.score`: one row per input, statuses, atomic output, resume, lock."""

import csv
import json
import shutil

import numpy as np
import pytest

from pipelines import score
from pipelines.persist import ModelFileError, load_model
from xray_features.io import read_xray

from .conftest import copy_test_films, interrupted_score_run, phantom, write_image


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def model_path(trained_run):
    return trained_run / "models" / "hog-logreg.joblib"


@pytest.fixture
def mixed_folder(tmp_path, synthetic_data):
    folder = copy_test_films(synthetic_data, tmp_path / "in", 4)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    data = (folder / "good0.png").read_bytes()
    (folder / "corrupt.png").write_bytes(data[: len(data) // 3])
    return folder


def test_folder_with_bad_files(mixed_folder, model_path, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    code = score.main([str(mixed_folder), "--model", str(model_path), "--out", str(out), "--quiet"])
    assert code == score.EXIT_SOME_FAILED
    rows = _rows(out)
    assert [r["path"] for r in rows] == score.expand_inputs([str(mixed_folder)])
    status = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    for name in ("good0.png", "good1.png", "good2.png", "good3.png"):
        assert status[name]["status"] == "ok"
        assert 0 <= float(status[name]["probability"]) <= 1
        assert status[name]["prediction"] in ("NORMAL", "PNEUMONIA")
    assert "empty" in status["empty.png"]["error"]
    assert "truncated" in status["corrupt.png"]["error"]
    assert all(status[n]["status"] == "error" for n in ("empty.png", "corrupt.png"))
    assert "notes.txt" not in status  # not an image: skipped and counted
    assert "1 files that are not images skipped" in capsys.readouterr().err
    assert score.main([str(mixed_folder), "--model", str(model_path), "--out", str(out),
                       "--quiet", "--strict"]) == score.EXIT_SOME_FAILED
    notes = {r["path"].rsplit("/", 1)[1]: r for r in _rows(out)}["notes.txt"]
    assert notes["status"] == "error" and "not an image" in notes["error"]


def test_scores_match_the_pipeline(mixed_folder, model_path, tmp_path):
    out = tmp_path / "s.csv"
    paths = [str(mixed_folder / f"good{i}.png") for i in range(4)]
    assert score.main(paths + ["--model", str(model_path), "--out", str(out), "--quiet"]) == 0
    model, _ = load_model(model_path)
    expected = model.predict_proba(paths)[:, 1]
    got = np.array([float(r["probability"]) for r in _rows(out)])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_list_file_and_missing_entries(tmp_path, model_path, mixed_folder):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{mixed_folder / 'good1.png'}\n# a comment\nin/nowhere.png\n")
    out = tmp_path / "s.csv"
    assert score.main([str(listing), "--model", str(model_path), "--out", str(out),
                       "--quiet"]) == 1
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert "not found" in rows[1]["error"]


def _interrupted(args, keep=3):
    return interrupted_score_run(args, keep)


def test_resume_skips_done_rows(mixed_folder, model_path, tmp_path, monkeypatch):
    out = tmp_path / "s.csv"
    args = [str(mixed_folder), "--model", str(model_path), "--out", str(out), "--quiet"]
    score.main(args)
    full = _rows(out)
    _interrupted(args)
    assert _rows(out) == full[:3]
    seen = []
    real = score.score_paths
    monkeypatch.setattr(score, "score_paths",
                        lambda m, p, **kw: seen.extend(p) or real(m, p, **kw))
    score.main(args + ["--resume"])
    assert _rows(out) == full
    assert sorted(seen) == sorted(r["path"] for r in full[3:])


def test_run_record_names_the_model_and_counts(mixed_folder, model_path, tmp_path):
    out = tmp_path / "s.csv"
    assert score.main([str(mixed_folder), "--model", str(model_path), "--out", str(out),
                       "--quiet"]) == 1
    record = json.loads(score.run_record_path(out).read_text())
    sidecar = model_path.with_name(model_path.name + ".sha256").read_text().split()[0]
    assert record["model_sha256"] == sidecar
    assert (record["inputs"], record["ok"], record["errors"], record["skipped"]) == (6, 4, 2, 1)
    model, metadata = load_model(model_path)
    assert record["threshold"] == model.steps[-1][1].threshold_
    assert (record["feature_set"], record["head"]) == (metadata["feature_set"], "logreg")


def test_resume_with_another_model_is_refused(mixed_folder, model_path, tmp_path, capsys):
    out = tmp_path / "s.csv"
    args = [str(mixed_folder), "--out", str(out), "--quiet"]
    _interrupted(args + ["--model", str(model_path)])
    before = out.read_bytes(), score.run_record_path(out).read_bytes()
    other = model_path.with_name("hog-xgb.joblib")
    capsys.readouterr()
    assert score.main(args + ["--model", str(other), "--resume"]) == score.EXIT_USAGE
    assert (out.read_bytes(), score.run_record_path(out).read_bytes()) == before
    error = capsys.readouterr().err
    assert "hog-logreg.joblib" in error and "hog-xgb.joblib" in error and "mix" in error


def test_resume_without_a_run_record_warns_and_keeps_the_rows(mixed_folder, model_path,
                                                               tmp_path, capsys):
    out = tmp_path / "s.csv"
    args = [str(mixed_folder), "--model", str(model_path), "--out", str(out), "--quiet"]
    score.main(args)
    full = _rows(out)
    _interrupted(args)
    score.run_record_path(out).unlink()  # a CSV from before run records existed
    capsys.readouterr()
    score.main(args + ["--resume"])
    assert _rows(out) == full
    assert "no run record" in capsys.readouterr().err
    assert json.loads(score.run_record_path(out).read_text())["ok"] == 4


def test_concurrent_run_is_refused(model_path, tmp_path, mixed_folder, capsys):
    out = tmp_path / "s.csv"
    with score._exclusive_lock(out):
        code = score.main([str(mixed_folder), "--model", str(model_path), "--out", str(out),
                           "--quiet"])
    assert code == score.EXIT_USAGE
    assert "another scoring run" in capsys.readouterr().err
    assert not out.exists()


def test_tampered_or_unsigned_model_is_refused(model_path, tmp_path):
    copy = tmp_path / "m.joblib"
    shutil.copy(model_path, copy)
    with pytest.raises(ModelFileError, match="sidecar"):
        load_model(copy)
    shutil.copy(str(model_path) + ".sha256", str(copy) + ".sha256")
    load_model(copy)  # a faithful copy loads
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match"):
        load_model(copy)
    assert score.main([str(tmp_path), "--model", str(copy), "--out",
                       str(tmp_path / "s.csv"), "--quiet"]) == score.EXIT_USAGE


def test_major_version_mismatch_is_refused(model_path, tmp_path, monkeypatch):
    from pipelines import persist

    real = persist.package_versions()
    monkeypatch.setattr(persist, "package_versions",
                        lambda: {**real, "scikit-learn": "99.0.0"})
    with pytest.raises(ModelFileError, match="major versions differ"):
        load_model(model_path)


def test_default_model_is_packaged_and_scores(tmp_path):
    if not score.DEFAULT_MODEL.exists():
        pytest.fail(f"no packaged default model at {score.DEFAULT_MODEL}")
    image = write_image(tmp_path / "x.png", phantom(224))
    out = tmp_path / "s.csv"
    assert score.main([str(image), "--out", str(out), "--quiet"]) == 0
    assert _rows(out)[0]["status"] == "ok"
    assert read_xray(image).shape == (224, 224)


def test_a_packaged_model_is_named_by_its_bare_file_name(tmp_path, monkeypatch):
    """``--model default_pipeline_fp32.joblib`` finds the packaged file when no such
    file is in the working folder; a file of that name there is used first."""
    monkeypatch.chdir(tmp_path)
    image = write_image(tmp_path / "x.png", phantom(224))
    out = tmp_path / "s.csv"
    assert score.main([str(image), "--model", "default_pipeline_fp32.joblib", "--out", str(out),
                       "--quiet"]) == 0
    from pipelines.persist import sha256_of
    from xray_features.cnn import MODELS_DIR

    row = _rows(out)[0]
    assert row["status"] == "ok"
    assert row["model"] == sha256_of(MODELS_DIR / "default_pipeline_fp32.joblib")[:12]
    assert score.main([str(image), "--out", str(out), "--quiet"]) == 0
    assert _rows(out)[0]["model"] == sha256_of(score.DEFAULT_MODEL)[:12]
    (tmp_path / "default_pipeline_fp32.joblib").write_bytes(b"not a model")
    assert score.main([str(image), "--model", "default_pipeline_fp32.joblib", "--out",
                       str(tmp_path / "t.csv"), "--quiet"]) == 2  # the local file, refused
