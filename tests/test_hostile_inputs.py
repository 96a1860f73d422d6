"""Batch scoring under hostile input (issue #18), through `python -m pipelines.score`:
every reproduction of the issue, as generated fixtures (no data images committed)."""

import copy
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import score
from pipelines.persist import load_model, save_model
from xray_features.io import read_xray

from .conftest import copy_test_films, interrupted_score_run, phantom, write_image
from .test_bad_inputs import write_dicom

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model_a(trained_run):
    return trained_run / "models" / "hog-logreg.joblib"


@pytest.fixture
def model_b(trained_run):
    return trained_run / "models" / "hog-xgb.joblib"


@pytest.fixture
def folder(tmp_path, synthetic_data):
    """Six good images (synthetic test films)."""
    return copy_test_films(synthetic_data, tmp_path / "in", 6)


def _rows(path):
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def _run(args, timeout=300, **kwargs):
    """The score CLI in a child process."""
    return subprocess.run([sys.executable, "-m", "pipelines.score", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def _spy(monkeypatch):
    """The paths `score_paths` is asked to score, from now on."""
    seen, real = [], score.score_paths
    monkeypatch.setattr(score, "score_paths",
                        lambda m, p, **kw: seen.extend(p) or real(m, p, **kw))
    return seen


def _interrupted(args, keep=2, before_first_write=False):
    return interrupted_score_run(args, keep, before_first_write)


# ---- 1. a file name that is not UTF-8 -------------------------------------------------------

def test_a_name_that_is_not_utf8_gets_its_row_and_resumes(folder, model_a, tmp_path,
                                                          monkeypatch):
    raw_name = os.fsdecode(b"caf\xe9.png")
    shutil.copy(folder / "good0.png", folder / raw_name)
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_OK
    data = out.read_bytes()
    assert b"/caf\xe9.png," in data  # the name's own bytes, lossless
    rows = _rows(out)
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows)
    assert os.path.exists([r["path"] for r in rows if "caf" in r["path"]][0])
    seen = _spy(monkeypatch)
    assert score.main(args + ["--resume"]) == score.EXIT_OK
    assert seen == [] and out.read_bytes() == data


# ---- 2. the run record and --resume after a killed run with another model --------------------

def test_resume_after_another_models_killed_run_never_keeps_the_first_models_rows(
        folder, model_a, model_b, tmp_path, capsys):
    out = tmp_path / "s.csv"
    args = [folder, "--out", out, "--quiet"]
    assert score.main(list(map(str, args + ["--model", model_a]))) == score.EXIT_OK
    rows_a = out.read_bytes()
    # B starts on the same --out and dies before its first checkpoint
    _interrupted(args + ["--model", model_b], before_first_write=True)
    assert out.read_bytes() == rows_a
    capsys.readouterr()
    assert score.main(list(map(str, args + ["--model", model_b, "--resume"]))) == \
        score.EXIT_USAGE
    err = capsys.readouterr().err
    assert "hog-logreg.joblib" in err and "mix" in err
    assert out.read_bytes() == rows_a


def test_a_kill_between_the_record_and_the_csv_still_names_the_rows_model(
        folder, model_a, model_b, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.csv"
    args = [str(folder), "--out", str(out), "--quiet"]
    assert score.main(args + ["--model", str(model_a)]) == score.EXIT_OK
    rows_a = out.read_bytes()
    real = score.atomic_write_bytes

    def die_before_the_csv(path, data):
        if Path(path) == out:
            raise KeyboardInterrupt  # killed after the record was replaced
        return real(path, data)

    monkeypatch.setattr(score, "atomic_write_bytes", die_before_the_csv)
    with pytest.raises(KeyboardInterrupt):
        score.main(args + ["--model", str(model_b)])
    monkeypatch.setattr(score, "atomic_write_bytes", real)
    assert out.read_bytes() == rows_a
    record = json.loads(score.run_record_path(out).read_text())
    assert record["model"].endswith("hog-xgb.joblib")  # the record is B's, the rows A's
    capsys.readouterr()
    assert score.main(args + ["--model", str(model_b), "--resume"]) == score.EXIT_USAGE
    assert "hog-logreg.joblib" in capsys.readouterr().err
    assert score.main(args + ["--model", str(model_a), "--resume"]) == score.EXIT_OK
    assert out.read_bytes() == rows_a


# ---- 4. --resume keeps, drops and rescores, and says so --------------------------------------

def test_resume_with_a_subset_of_the_inputs_keeps_the_other_rows(folder, model_a, tmp_path,
                                                                 capsys):
    out = tmp_path / "s.csv"
    assert score.main([str(folder), "--model", str(model_a), "--out", str(out),
                       "--quiet"]) == 0
    before = _rows(out)
    two = [str(folder / "good4.png"), str(folder / "good1.png")]
    capsys.readouterr()
    assert score.main(two + ["--model", str(model_a), "--out", str(out), "--quiet",
                             "--resume"]) == 0
    after = _rows(out)
    assert sorted(map(str, after), key=str) == sorted(map(str, before), key=str)
    assert [r["path"] for r in after[:2]] == two  # this run's inputs first, in their order
    assert "kept 2 rows" in capsys.readouterr().err


def test_resume_matches_relative_and_absolute_paths(folder, model_a, tmp_path, monkeypatch):
    out = tmp_path / "s.csv"
    args = ["--model", str(model_a), "--out", str(out), "--quiet"]
    _interrupted([str(folder)] + args, keep=3)
    assert len(_rows(out)) == 3
    monkeypatch.chdir(tmp_path)
    seen = _spy(monkeypatch)
    assert score.main(["in"] + args + ["--resume"]) == 0
    assert sorted(seen) == [f"in/good{i}.png" for i in (3, 4, 5)]
    assert [r["path"] for r in _rows(out)] == [f"in/good{i}.png" for i in range(6)]


def _edit(out, change):
    rows = _rows(out)
    change(rows)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=score.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("with_record", [True, False])
def test_resume_never_keeps_a_hand_edited_row(folder, model_a, tmp_path, monkeypatch, capsys,
                                              with_record):
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == 0
    full = _rows(out)
    _edit(out, lambda rows: rows[1].update(probability="MAYBE", prediction="7"))
    if not with_record:
        score.run_record_path(out).unlink()  # a CSV from before run records
    seen = _spy(monkeypatch)
    capsys.readouterr()
    assert score.main(args + ["--resume"]) == 0
    assert _rows(out) == full
    assert full[1]["path"] in seen
    err = capsys.readouterr().err
    assert ("do not match its run record" in err) if with_record else ("1 invalid rows" in err)


def test_resume_reads_a_spreadsheet_saved_csv(folder, model_a, tmp_path, monkeypatch):
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == 0
    full = out.read_bytes()
    _interrupted(args, keep=3)
    rows = _rows(out)
    for row in rows:  # what a spreadsheet's "save as CSV" does
        row["probability"] = row["probability"].rstrip("0")
    text = "\r\n".join([",".join(score.COLUMNS)] + [",".join(r[c] for c in score.COLUMNS)
                                                    for r in rows]) + "\r\n"
    out.write_bytes(b"\xef\xbb\xbf" + text.encode())
    seen = _spy(monkeypatch)
    assert score.main(args + ["--resume"]) == 0
    assert sorted(seen) == [str(folder / f"good{i}.png") for i in (3, 4, 5)]
    assert out.read_bytes() == full


# ---- 3. memory per batch ----------------------------------------------------------------------

def test_a_batch_is_cut_by_decoded_pixels(folder, model_a, monkeypatch):
    from sklearn.pipeline import Pipeline

    sizes, real = [], Pipeline.predict_proba
    monkeypatch.setattr(Pipeline, "predict_proba",
                        lambda self, X, **kw: (isinstance(X, list) and sizes.append(len(X)))
                        or real(self, X, **kw))  # a list of images: the scoring call
    model, _ = load_model(model_a)
    paths = [str(folder / f"good{i}.png") for i in range(6)]
    pixels = sum(np.prod(read_xray(p).shape) for p in paths[:2])
    rows = score.score_paths(model, paths, max_batch_pixels=pixels)
    assert sizes == [2, 2, 2]
    assert rows == score.score_paths(model, paths)


# VmHWM, the peak RSS of this process's own memory: ru_maxrss would also count the
# parent's RSS at fork time (Linux keeps it across execve), and pytest's can be large
_PEAK = """
import json, sys
from pipelines import score
code = score.main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "peak_mb": peak_kb / 1024}))
"""


def _ramp_png(path, side):
    """A side x side 8-bit PNG of a horizontal ramp (not blank), a few KB:
    every row after the first is filtered as 'Up', so it is all zeros."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I",
                                                                      zlib.crc32(kind + data))

    ramp = (np.arange(side) * 255 // (side - 1)).astype(np.uint8).tobytes()
    compressor = zlib.compressobj(9)
    body = [compressor.compress(b"\0" + ramp)]
    up = b"\2" + b"\0" * side
    body += [compressor.compress(up) for _ in range(side - 1)] + [compressor.flush()]
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path


def test_eight_7999_pixel_films_score_in_bounded_memory(model_a, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    source = _ramp_png(tmp_path / "ramp.png", 7999)
    assert read_xray(source).std() > 0.2
    for i in range(8):
        os.link(source, folder / f"big{i}.png")
    out = tmp_path / "s.csv"
    done = subprocess.run([sys.executable, "-c", _PEAK, str(folder), "--model", str(model_a),
                           "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == score.EXIT_OK
    # one 64 M-pixel film at a time: about 1.1 GB; all eight at once took over 4 GB
    assert result["peak_mb"] < 1536, result
    assert [r["status"] for r in _rows(out)] == ["ok"] * 8


# ---- 5. devices, FIFOs, and memory errors inside a folder -------------------------------------

def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def test_a_folder_with_dev_zero_and_fifo_symlinks_finishes_with_a_row_each(folder, model_a,
                                                                            tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (folder / "fifo.png").symlink_to(tmp_path / "pipe")
    (folder / "zero.png").symlink_to("/dev/zero")
    out = tmp_path / "s.csv"
    # a reader that blocks on the FIFO, or reads /dev/zero, is stopped by the timeout
    # and the memory limit; within them the job ends with a row for every input
    done = _run([folder, "--model", model_a, "--out", out, "--quiet"], timeout=120,
                preexec_fn=_limit_memory)
    assert done.returncode == score.EXIT_SOME_FAILED, done.stderr[-2000:]
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert len(rows) == 8
    assert "FIFO" in rows["fifo.png"]["error"] and "device" in rows["zero.png"]["error"]
    assert all(rows[f"good{i}.png"]["status"] == "ok" for i in range(6))


def test_no_error_row_has_an_empty_reason(folder, model_a, monkeypatch):
    model, _ = load_model(model_a)

    def no_memory(*args, **kwargs):
        raise MemoryError()

    from pipelines import scoring

    monkeypatch.setattr(scoring, "read_xray_and_header", no_memory)
    rows = score.score_paths(model, [str(folder / "good0.png")])
    assert rows[0]["error"] == f"{folder / 'good0.png'}: not enough memory"


# ---- 8. nothing fails towards NORMAL -----------------------------------------------------------

def test_a_head_that_outputs_nan_gives_error_rows_not_normal(model_a, tmp_path):
    model, metadata = load_model(model_a)
    model = copy.deepcopy(model)
    decision = model.steps[-1][1]  # the head's own probability is NaN, uncalibrated
    decision.estimator_[-1].coef_ = np.full_like(decision.estimator_[-1].coef_, np.nan)
    decision.calibrator_ = None
    bad = save_model(model, tmp_path / "nan.joblib", metadata)
    images = [str(write_image(tmp_path / f"x{i}.png", phantom(64, seed=i))) for i in range(3)]
    out = tmp_path / "s.csv"
    assert score.main(images + ["--model", str(bad), "--out", str(out), "--quiet"]) == \
        score.EXIT_SOME_FAILED
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["error"] * 3
    assert all("invalid probability (nan)" in r["error"] and r["prediction"] == "" for r in rows)


def test_blank_films_are_errors_not_scores(model_a, tmp_path):
    folder = tmp_path / "blank"
    write_image(folder / "grey.png", np.full((256, 256), 0.5))
    write_image(folder / "black.png", np.zeros((256, 256)))
    slope0 = write_dicom(folder / "slope0.dcm", (phantom(96) * 4000).astype(np.uint16))
    import pydicom

    ds = pydicom.dcmread(slope0)
    ds.RescaleSlope, ds.RescaleIntercept = 0, 100
    ds.save_as(slope0)
    write_image(folder / "film.png", phantom(256))
    out = tmp_path / "s.csv"
    assert score.main([str(folder), "--model", str(model_a), "--out", str(out),
                       "--quiet"]) == score.EXIT_SOME_FAILED
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    for name in ("grey.png", "black.png", "slope0.dcm"):
        assert rows[name]["status"] == "error" and rows[name]["prediction"] == ""
        assert "no image content" in rows[name]["error"], rows[name]
    assert rows["film.png"]["status"] == "ok"


# ---- 9. --out never clobbers --------------------------------------------------------------------

def test_out_may_not_be_an_input_the_model_a_list_or_a_special_file(folder, model_a, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{folder / 'good0.png'}\n")
    os.mkfifo(tmp_path / "fifo")
    image = folder / "good1.png"
    link = tmp_path / "link.csv"
    link.symlink_to(image)
    protected = {p: p.read_bytes() for p in (image, listing, model_a)}
    for out, needle in ((image, "input"), (link, "symbolic link"), (listing, "list"),
                        (model_a, "model"), (tmp_path / "fifo", "not a regular file")):
        done = _run([folder, listing, "--model", model_a, "--out", out, "--quiet"])
        assert done.returncode == score.EXIT_USAGE, (out, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in protected} == protected
    assert (tmp_path / "fifo").is_fifo()
    notes = tmp_path / "notes.csv"
    notes.write_text("name,remark\nx,keep me\n")
    done = _run([folder, "--model", model_a, "--out", notes, "--quiet"])
    assert done.returncode == score.EXIT_USAGE and "not a score CSV" in done.stderr
    assert notes.read_text() == "name,remark\nx,keep me\n"


def test_outputs_inside_the_input_folder_are_not_scored(folder, model_a):
    out = folder / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_OK
    assert score.main(args) == score.EXIT_OK  # its CSV, lock and record are not inputs
    assert [Path(r["path"]).name for r in _rows(out)] == [f"good{i}.png" for i in range(6)]


# ---- 10. exit codes ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["0", "-5", "many"])
def test_a_bad_batch_size_is_a_usage_error_in_one_line(folder, model_a, tmp_path, size):
    done = _run([folder, "--model", model_a, "--out", tmp_path / "s.csv", "--batch-size", size])
    assert done.returncode == score.EXIT_USAGE
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "--batch-size" in done.stderr
    assert not (tmp_path / "s.csv").exists() and not score.run_record_path(
        tmp_path / "s.csv").exists()


def test_a_list_that_is_not_utf8_is_read_byte_for_byte(folder, model_a, tmp_path):
    latin1 = os.fsdecode(b"radiograf\xeda.png")  # what a Latin-1 system names this file
    shutil.copy(folder / "good0.png", folder / latin1)
    listing = tmp_path / "inputs.lst"
    listing.write_bytes(b"in/radiograf\xeda.png\nin/good1.png\n")
    out = tmp_path / "s.csv"
    done = _run([listing, "--model", model_a, "--out", out, "--quiet"])
    assert done.returncode == score.EXIT_OK, done.stderr
    assert [r["status"] for r in _rows(out)] == ["ok", "ok"]


def test_an_internal_error_exits_2_in_one_line(folder, model_a, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(score, "_score_all", broken)
    assert score.main([str(folder), "--model", str(model_a), "--out", str(tmp_path / "s.csv"),
                       "--quiet"]) == score.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: internal error: AttributeError") and err.count("\n") == 1


# ---- 11. list files ----------------------------------------------------------------------------

def test_list_files_keep_every_name(folder, model_a, tmp_path):
    names = ["#hash.png", "next\u0085line.png", "line\u2028sep.png"]
    for name in names:
        shutil.copy(folder / "good0.png", folder / name)
    listing = tmp_path / "inputs.txt"
    lines = ["in/good1.png", "# a comment", "#", ""] + [f"in/{n}" for n in names] + \
        ["in/bad\0name.png"]
    listing.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    out = tmp_path / "s.csv"
    assert score.main([str(listing), "--model", str(model_a), "--out", str(out),
                       "--quiet"]) == score.EXIT_SOME_FAILED
    rows = _rows(out)
    expected = [str(tmp_path / "in" / n) for n in ["good1.png"] + names + ["bad\0name.png"]]
    assert [r["path"] for r in rows] == expected
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"]
    assert rows[-1]["error"].startswith(expected[-1] + ": invalid file name")


# ---- 12. spreadsheet formulas ------------------------------------------------------------------

def test_paths_that_look_like_formulas_are_written_as_text(folder, model_a, tmp_path,
                                                           monkeypatch):
    shutil.copy(folder / "good0.png", folder / "=HYPERLINK(1).png")
    (folder / "@SUM(1).png").write_bytes(b"not an image")
    out = tmp_path / "s.csv"
    args = ["--model", str(model_a), "--out", str(out), "--quiet"]
    monkeypatch.chdir(folder)
    assert score.main(["=HYPERLINK(1).png", "@SUM(1).png", "good1.png"] + args) == 1
    with open(out, newline="", encoding="utf-8") as handle:
        raw = list(csv.reader(handle))
    assert raw[1][0] == "'=HYPERLINK(1).png" and raw[2][0] == "'@SUM(1).png"
    assert raw[2][score.COLUMNS.index("error")].startswith("'@SUM(1).png: not an image")
    assert raw[3][0] == "good1.png"
    seen = _spy(monkeypatch)
    assert score.main(["=HYPERLINK(1).png", "@SUM(1).png", "good1.png"] + args +
                      ["--resume"]) == 1
    assert seen == []  # the escaped rows are read back as the same paths


def test_an_unreadable_record_blocks_a_resume_but_not_a_fresh_run(folder, model_a, tmp_path):
    out = tmp_path / "s.csv"
    args = [str(folder), "--model", str(model_a), "--out", str(out), "--quiet"]
    assert score.main(args) == score.EXIT_OK
    score.run_record_path(out).write_text("{torn")
    assert score.main(args + ["--resume"]) == score.EXIT_USAGE
    assert score.main(args) == score.EXIT_OK
    assert json.loads(score.run_record_path(out).read_text())["ok"] == 6
