"""The console command `xray-hybrid` (pipelines.cli) and the lean scoring install."""

import configparser
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli, logs

ROOT = Path(__file__).resolve().parents[1]


def test_console_script_points_at_cli_main():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = config["options.entry_points"]["console_scripts"].strip().splitlines()
    assert "xray-hybrid = pipelines.cli:main" in [s.strip() for s in scripts]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == cli.version_text()
    assert cli.version_text().startswith("xray-hybrid 0.")


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_subcommand_has_the_options_of_its_module(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"python -m pipelines.{command}" in capsys.readouterr().out


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2


def test_score_through_the_console_command(tmp_path, phantoms):
    """Scores a folder with the packaged model; stderr is not a terminal here,
    so there is no progress bar (no carriage return) in the redirected log."""
    from tests.conftest import write_image

    for i, image in enumerate(phantoms[:3]):
        write_image(tmp_path / "in" / f"film{i}.png", image)
    out = tmp_path / "scores.csv"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "score", str(tmp_path / "in"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)


def test_run_logs_to_a_file_at_the_level_asked(tmp_path, synthetic_data):
    log = tmp_path / "run.log"
    code = cli.main(["--log-level", "info", "--log-file", str(log), "run", "--data",
                     str(synthetic_data), "--features", "hog", "--heads", "logreg", "--cv", "3",
                     "--n-boot", "20", "--no-save", "--cache-dir", "none",
                     "--out", str(tmp_path / "out")])
    assert code == 0
    text = log.read_text()
    assert "INFO xray_hybrid.run: training images" in text
    assert "fitting hog/logreg" in text
    quiet = tmp_path / "quiet.log"
    assert cli.main(["--log-level", "WARNING", "--log-file", str(quiet), "run", "--data",
                     str(synthetic_data), "--features", "hog", "--heads", "logreg", "--cv", "3",
                     "--n-boot", "20", "--no-save", "--cache-dir", "none",
                     "--out", str(tmp_path / "out2")]) == 0
    assert "fitting" not in quiet.read_text()
    logs.configure("INFO")  # leave the handlers as python -m pipelines.run has them


def test_progress_bars_only_on_a_terminal(tmp_path):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert logs.progress_enabled(False, Stream(True))
    assert not logs.progress_enabled(False, Stream(False))
    assert not logs.progress_enabled(True, Stream(True))


def test_a_missing_extra_is_named(monkeypatch, capsys):
    """`xray-hybrid run` on a scoring-only install says which extra to add."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "pipelines.run", raising=False)
    monkeypatch.delitem(sys.modules, "pipelines.report", raising=False)
    assert cli.main(["run", "--help"]) == 2
    assert "pip install 'xray-hybrid[report]'" in capsys.readouterr().err
    logs.configure("INFO")


BLOCKER = """
import importlib.abc, sys
BLOCKED = {"xgboost", "matplotlib", "skl2onnx", "onnxmltools", "onnx"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
"""


def test_scoring_needs_no_training_export_or_report_package(tmp_path, phantoms):
    """What the lean install (`pip install -e .`) lacks is never imported to
    score with the packaged model, through the API or the console command."""
    from tests.conftest import write_image

    for i, image in enumerate(phantoms[:2]):
        write_image(tmp_path / "in" / f"film{i}.png", image)
    code = BLOCKER + f"""
from pipelines import api, cli, score, calibrate
model = api.load_default()
print(model.predict(sorted(str(p) for p in __import__("pathlib").Path({str(tmp_path / 'in')!r}).iterdir())))
assert cli.main(["score", {str(tmp_path / 'in')!r}, "--out", {str(tmp_path / 's.csv')!r}]) == 0
assert not BLOCKED & {{m.split(".")[0] for m in sys.modules}}
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.csv").is_file()
