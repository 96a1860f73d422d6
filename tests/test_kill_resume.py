"""Fault tolerance of `python -m pipelines.score`: SIGKILL halfway, --resume, and the
lock between processes."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines import score
from pipelines.assemble import make_pipeline
from pipelines.persist import save_model
from xray_features.dataset import index_dataset

from .conftest import phantom, pneumonia_phantom, write_image

ROOT = Path(__file__).resolve().parent.parent
N_INPUTS = 2000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, synthetic_data):
    """hog + logistic regression, fitted on the synthetic train set."""
    train = index_dataset(synthetic_data / "train")
    model = make_pipeline("hog", "logreg", cv=3).fit(list(train.paths), train.labels)
    path = tmp_path_factory.mktemp("tiny") / "hog-logreg.joblib"
    save_model(model, path, {"feature_set": "hog", "head": "logreg",
                             "threshold": model.steps[-1][1].threshold_})
    return path


@pytest.fixture(scope="module")
def many_inputs(tmp_path_factory):
    """2,000 hard links to 4 small PNGs (2 normal-like, 2 pneumonia-like), plus a bad one."""
    base = tmp_path_factory.mktemp("many")
    sources = [write_image(base / f"src{i}.png", maker(64, seed=i))
               for i, maker in enumerate((phantom, phantom, pneumonia_phantom, pneumonia_phantom))]
    folder = base / "inputs"
    folder.mkdir()
    for i in range(N_INPUTS - 1):
        os.link(sources[i % 4], folder / f"img{i:04d}.png")
    (folder / "img1999.png").write_bytes(b"broken")
    return folder


def _read_csv(path):
    """Rows of a complete, well-formed score CSV (fails on a torn file)."""
    with open(path, newline="", encoding="utf-8") as handle:
        text = handle.read()
    assert text.endswith("\n"), "the CSV ends mid-line"
    reader = csv.reader(text.splitlines())
    assert next(reader) == list(score.COLUMNS)
    rows = list(reader)
    status = score.COLUMNS.index("status")
    for row in rows:
        assert len(row) == len(score.COLUMNS), row
        assert row[status] in ("ok", "error"), row
        if row[status] == "ok":
            assert 0.0 <= float(row[1]) <= 1.0 and row[2] in score.LABEL_NAMES
    return rows


def _score_command(folder, model, out, *extra):
    return [sys.executable, "-m", "pipelines.score", str(folder), "--model", str(model),
            "--out", str(out), "--quiet", *extra]


def test_sigkill_halfway_then_resume_matches_an_uninterrupted_run(tiny_model, many_inputs,
                                                                   tmp_path):
    reference_csv = tmp_path / "reference.csv"
    assert score.main([str(many_inputs), "--model", str(tiny_model), "--out",
                       str(reference_csv), "--quiet"]) == score.EXIT_SOME_FAILED
    reference = _read_csv(reference_csv)
    assert len(reference) == N_INPUTS and reference[-1][score.COLUMNS.index("status")] == "error"

    out = tmp_path / "run" / "scores.csv"
    process = subprocess.Popen(_score_command(many_inputs, tiny_model, out, "--batch-size", "16",
                                              "--checkpoint-seconds", "0"),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen, deadline = 0, time.monotonic() + 120
    while seen < N_INPUTS // 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            seen = max(seen, out.read_bytes().count(b"\n") - 1)
        except FileNotFoundError:
            pass
    assert process.poll() is None, f"finished before the kill: {process.stderr.read()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    # absent, or a valid earlier CSV: complete rows, a prefix of the full run
    if out.exists():
        partial = _read_csv(out)
        assert partial == reference[:len(partial)]
        assert N_INPUTS // 4 <= len(partial) < N_INPUTS
    print(f"killed with {seen} rows seen, {len(partial) if out.exists() else 0} on disk")

    done = subprocess.run(_score_command(many_inputs, tiny_model, out, "--resume"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == score.EXIT_SOME_FAILED, done.stderr[-2000:]
    assert _read_csv(out) == reference  # row for row
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], "temporary files of the killed run were not cleaned up"


_HOLD_LOCK = """
import sys
from pipelines.score import _exclusive_lock
with _exclusive_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_lock_refuses_a_second_process_and_dies_with_its_holder(tiny_model, tmp_path):
    image = write_image(tmp_path / "x.png", phantom(64))
    out = tmp_path / "scores.csv"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(_score_command(image, tiny_model, out), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == score.EXIT_USAGE
        assert "another scoring run" in second.stderr and "lock" in second.stderr
        assert not out.exists()
    finally:
        holder.kill()  # a crashed holder: the kernel drops its lock
        holder.wait(timeout=30)
        holder.stdin.close()
        holder.stdout.close()
    assert (tmp_path / "scores.csv.lock").exists()  # a stale lock file does not block
    assert score.main([str(image), "--model", str(tiny_model), "--out", str(out),
                       "--quiet"]) == score.EXIT_OK
    rows = _read_csv(out)
    assert len(rows) == 1 and rows[0][score.COLUMNS.index("status")] == "ok"
    assert np.isfinite(float(rows[0][1]))
