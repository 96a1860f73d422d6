"""The score CSV and run of issue #22 (part 3): an unambiguous prediction, the
threshold and model id on every row, old CSVs resumed, no lock file left,
--retry-errors, non-image files skipped and counted, symlinked folders followed
once, and an import that needs no ``fcntl``."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines import score

from .conftest import phantom
from .test_bad_inputs import write_dicom
from .test_hostile_inputs import _rows, _spy, folder, model_a  # noqa: F401  (fixtures)
from .test_subtype_run import subtype_run  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent


def _lock(out):
    return Path(str(out) + ".lock")


def test_every_row_names_its_prediction_threshold_and_model(folder, model_a, tmp_path):
    out = tmp_path / "s.csv"
    args = [str(folder), str(tmp_path / "missing.png"), "--model", str(model_a), "--out",
            str(out), "--quiet"]
    assert score.main(args) == score.EXIT_SOME_FAILED
    with open(out, newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header[:7]) == ("path", "probability", "prediction", "threshold", "model",
                                 "status", "error")
    assert "label" not in header
    rows = _rows(out)
    record = json.loads(score.run_record_path(out).read_text())
    threshold = record["threshold"]
    assert {r["model"] for r in rows} == {record["model_sha256"][:12]} == {record["model_id"]}
    assert all(abs(float(r["threshold"]) - threshold) < 1e-6 for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6 and rows[-1]["status"] == "error"
    for r in ok:
        assert r["prediction"] == ("PNEUMONIA" if float(r["probability"]) >= threshold
                                   else "NORMAL")


def test_no_lock_file_is_left_after_a_clean_exit_or_a_clean_failure(folder, model_a, trained_run,
                                                                     tmp_path):
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_OK
    assert out.exists() and not _lock(out).exists()
    assert score.main([str(tmp_path / "missing.png")] + args) == score.EXIT_SOME_FAILED
    assert not _lock(out).exists()
    other = trained_run / "models" / "hog-xgb.joblib"  # refused inside the lock
    assert score.main([str(folder), "--model", str(other), "--out", str(out), "--quiet",
                       "--resume"]) == score.EXIT_USAGE
    assert not _lock(out).exists()
    with score._exclusive_lock(out):  # held: a second run is refused, and removes nothing
        assert score.main(args) == score.EXIT_USAGE
        assert _lock(out).exists()
    assert not _lock(out).exists()


def test_retry_errors_scores_error_rows_again(folder, model_a, tmp_path, monkeypatch):
    late = tmp_path / "late.png"
    out = tmp_path / "s.csv"
    args = [str(folder), str(late), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_SOME_FAILED  # late.png is not there yet
    shutil.copy(folder / "good0.png", late)
    seen = _spy(monkeypatch)
    assert score.main(args + ["--resume"]) == score.EXIT_SOME_FAILED  # errors are kept
    assert seen == []
    assert score.main(args + ["--retry-errors"]) == score.EXIT_OK  # implies --resume
    assert seen == [str(late)]
    assert [r["status"] for r in _rows(out)] == ["ok"] * 7


def test_retry_errors_keeps_error_rows_of_inputs_not_given(folder, model_a, tmp_path, capsys):
    """--retry-errors rescores the error rows of this run's inputs only: the
    error row of an input not given this time is kept, and the note counts one."""
    out = tmp_path / "s.csv"
    missing = [str(tmp_path / "b.png"), str(tmp_path / "c.png")]
    common = ["--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main([str(folder / "good0.png"), *missing] + common) == score.EXIT_SOME_FAILED
    capsys.readouterr()
    assert score.main([str(folder / "good0.png"), missing[0], "--retry-errors"]
                      + common) == score.EXIT_SOME_FAILED
    said = capsys.readouterr()
    rows = _rows(out)
    assert [r["path"] for r in rows] == [str(folder / "good0.png"), *missing]
    assert [r["status"] for r in rows] == ["ok", "error", "error"]
    assert "1 error rows not kept" in said.out + said.err


# ---- CSVs written by the previous column layout ------------------------------------------------

def _legacy_digest(rows):
    """rows_sha256 as the previous release computed it (path, probability as 6
    decimals, prediction, label as an integer, status, error)."""
    import hashlib

    digest = hashlib.sha256()
    for r in rows:
        fields = [r["path"], f"{float(r['probability']):.6f}" if r["probability"] else "",
                  r["prediction"], r["label"], r["status"], r["error"]]
        digest.update("\x1f".join(fields).encode() + b"\x1e")
    return digest.hexdigest()


def _make_legacy(out, keep, with_record=True):
    """Rewrite ``out`` (and its record) as the previous release wrote them, first ``keep`` rows."""
    rows = []
    for r in _rows(out)[:keep]:
        label = "" if r["status"] == "error" else str(score.LABEL_NAMES.index(r["prediction"]))
        rows.append({"path": r["path"], "probability": r["probability"],
                     "prediction": r["prediction"], "label": label, "status": r["status"],
                     "error": r["error"]})
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=score.LEGACY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    record = json.loads(score.run_record_path(out).read_text())
    for key in ("model_id", "warnings", "skipped"):
        record.pop(key, None)
    record.update(rows=len(rows), rows_sha256=_legacy_digest(rows), previous=None)
    if with_record:
        score.run_record_path(out).write_text(json.dumps(record))
    else:
        score.run_record_path(out).unlink()


def test_resume_migrates_the_rows_of_an_old_layout_csv(folder, model_a, tmp_path, monkeypatch,
                                                       capsys):
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_OK
    full = out.read_bytes()
    _make_legacy(out, keep=4)
    seen = _spy(monkeypatch)
    capsys.readouterr()
    assert score.main(args + ["--resume"]) == score.EXIT_OK
    assert seen == [str(folder / "good4.png"), str(folder / "good5.png")]
    assert out.read_bytes() == full  # kept rows migrated: the same CSV as one fresh run
    err = capsys.readouterr().err
    assert "kept 4 rows" in err and "old columns" in err


def test_an_old_layout_csv_without_a_record_is_scored_again(folder, model_a, tmp_path,
                                                            monkeypatch, capsys):
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_OK
    full = out.read_bytes()
    _make_legacy(out, keep=4, with_record=False)
    seen = _spy(monkeypatch)
    capsys.readouterr()
    assert score.main(args + ["--resume"]) == score.EXIT_OK
    assert len(seen) == 6 and out.read_bytes() == full
    assert "name no model" in capsys.readouterr().err


def test_a_row_of_another_model_is_not_kept(folder, model_a, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_OK
    full = _rows(out)
    score.run_record_path(out).unlink()  # rows without a record are checked one by one
    rows = _rows(out)
    rows[2]["model"] = "0123456789ab"
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=score.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    seen = _spy(monkeypatch)
    capsys.readouterr()
    assert score.main(args + ["--resume"]) == score.EXIT_OK
    assert seen == [str(folder / "good2.png")] and _rows(out) == full
    assert "scored by model 0123456789ab" in capsys.readouterr().err


# ---- what a folder holds ----------------------------------------------------------------------

def test_non_image_files_are_skipped_and_counted_unless_strict(folder, model_a, tmp_path,
                                                               capsys):
    (folder / "notes.txt").write_text("scanned on Tuesday")
    (folder / "labels.csv").write_text("path,label\n")
    (folder / "meta.json").write_text("{}")
    (folder / "empty").write_bytes(b"")
    pixels = (phantom(96) * 4000).astype("uint16")
    write_dicom(folder / "IM000001", pixels)  # DICOMs often have no extension,
    write_dicom(folder / "1.2.840.113619.2.55.3.7", pixels)  # or a UID for a name
    (folder / "broken.png").write_bytes(b"text, not a PNG")  # an image's name: a row
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert score.main(args) == score.EXIT_SOME_FAILED  # broken.png
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {f"good{i}.png" for i in range(6)} | {
        "IM000001", "1.2.840.113619.2.55.3.7", "broken.png"}
    assert rows["IM000001"]["status"] == "ok" and rows["1.2.840.113619.2.55.3.7"]["status"] == "ok"
    assert "4 files that are not images skipped" in capsys.readouterr().err
    assert json.loads(score.run_record_path(out).read_text())["skipped"] == 4
    assert score.main(args + ["--strict"]) == score.EXIT_SOME_FAILED
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert len(rows) == 13 and rows["notes.txt"]["status"] == "error"
    assert "not an image" in rows["notes.txt"]["error"]
    assert not (tmp_path / "s.csv.lock").exists()


def test_a_folder_of_notes_only_is_a_usage_error_that_says_why(tmp_path, model_a, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing to score")
    assert score.main([str(folder), "--model", str(model_a), "--out", str(tmp_path / "s.csv"),
                       "--quiet"]) == score.EXIT_USAGE
    assert "1 files that are not images skipped" in capsys.readouterr().err


def test_symlinked_folders_are_followed_once_and_loops_are_not(folder, model_a, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(folder / "good0.png", elsewhere / "a.png")
    shutil.copy(folder / "good1.png", elsewhere / "b.png")
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (folder / "same_again").symlink_to(elsewhere, target_is_directory=True)
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..", target_is_directory=True)  # a loop
    out = tmp_path / "s.csv"
    assert score.main([str(folder), "--model", str(model_a), "--out", str(out),
                       "--quiet"]) == score.EXIT_OK
    names = [os.path.relpath(r["path"], folder) for r in _rows(out)]
    assert names == [f"good{i}.png" for i in range(6)] + ["linked/a.png", "linked/b.png"]


# ---- Windows ------------------------------------------------------------------------------------

_WITHOUT_FCNTL = """
import builtins, sys
sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows
real = builtins.__import__
def no_fcntl(name, *args, **kwargs):
    if name == "fcntl":
        raise ModuleNotFoundError("No module named 'fcntl'")
    return real(name, *args, **kwargs)
builtins.__import__ = no_fcntl
import pipelines.score, pipelines.calibrate, pipelines.cli
print("imported")
"""


def test_scoring_and_calibration_import_without_fcntl():
    done = subprocess.run([sys.executable, "-c", _WITHOUT_FCNTL], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "imported"


def test_an_old_three_class_csv_resumes_into_the_new_columns(subtype_run, tmp_path, monkeypatch):
    data, out = subtype_run
    model = str(out / "models" / "hog-logreg.joblib")
    paths = sorted(str(p) for p in (data / "test").rglob("*.png"))[:4]
    csv_path = tmp_path / "s.csv"
    args = ["--model", model, "--out", str(csv_path), "--quiet"]
    assert score.main(paths + args) == score.EXIT_OK
    full = csv_path.read_bytes()
    old = [{k: v for k, v in r.items() if k != "model" and k not in score.DICOM_COLUMNS}
           for r in _rows(csv_path)]  # path,p_normal,p_bacterial,p_viral,prediction,status,error
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(old[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(old)
    record = json.loads(score.run_record_path(csv_path).read_text())
    record.update(rows_sha256=score.rows_sha256(old), previous=None)
    score.run_record_path(csv_path).write_text(json.dumps(record))
    seen = _spy(monkeypatch)
    assert score.main(paths + args + ["--resume"]) == score.EXIT_OK
    assert seen == [] and csv_path.read_bytes() == full


def test_a_lock_file_replaced_while_it_was_being_taken_is_taken_again(tmp_path, monkeypatch):
    """The run before removed the file after this one opened it: the lock on the
    removed file protects nothing, so it is taken on the file now at the path."""
    out = tmp_path / "s.csv"
    real, calls = score._try_lock, []

    def replaced_first(handle):
        if not calls:
            _lock(out).unlink()
            _lock(out).write_bytes(b"")  # the next run's new file
        calls.append(os.fstat(handle.fileno()).st_ino)
        return real(handle)

    monkeypatch.setattr(score, "_try_lock", replaced_first)
    with score._exclusive_lock(out):
        assert len(calls) == 2 and calls[1] == _lock(out).stat().st_ino != calls[0]
    assert not _lock(out).exists()


def test_files_are_read_and_folders_scanned_without_o_nonblock(folder, model_a, tmp_path,
                                                               monkeypatch):
    """Windows has no os.O_NONBLOCK: reading and scanning must not need it."""
    (folder / "notes.txt").write_text("not an image")
    monkeypatch.delattr(os, "O_NONBLOCK")
    out = tmp_path / "s.csv"
    assert score.main([str(folder), "--model", str(model_a), "--out", str(out),
                       "--quiet"]) == score.EXIT_OK
    assert [r["status"] for r in _rows(out)] == ["ok"] * 6
