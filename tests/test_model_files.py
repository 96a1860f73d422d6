"""Model files that must be refused, or accepted, when they load (issue #18):
numbers that would fail towards NORMAL, pickles that do not unpickle, versions
read before unpickling, uppercase sidecars, ONNX external data, thread counts,
and site recalibration on too few images."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import calibrate, export, onnx_model, persist, score
from pipelines.onnx_model import MANIFEST, load_onnx_model
from pipelines.persist import ModelFileError, load_model, save_model, sha256_of

from .conftest import phantom, pneumonia_phantom, write_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model_path(trained_run):
    return trained_run / "models" / "hog-logreg.joblib"


@pytest.fixture(scope="module")
def export_dir(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hog-logreg.onnx.d"
    assert export.main(["--model", str(trained_run / "models" / "hog-logreg.joblib"),
                        "--out", str(out)]) == 0
    return out


def _copy_export(export_dir, tmp_path):
    folder = tmp_path / "m.onnx.d"
    shutil.copytree(export_dir, folder)
    return folder


def _edit_manifest(folder, edit):
    spec = json.loads((folder / MANIFEST).read_text())
    edit(spec)
    (folder / MANIFEST).write_text(json.dumps(spec))  # NaN is written as JSON's NaN
    return folder


def _resaved(model_path, tmp_path, change):
    model, metadata = load_model(model_path)
    model = copy.deepcopy(model)
    change(model.steps[-1][1])
    path = tmp_path / "changed.joblib"
    save_model(model, path, metadata)
    return path


def _score(args, tmp_path):
    """Run the score CLI in a child process: (exit code, stderr)."""
    done = subprocess.run([sys.executable, "-m", "pipelines.score", *map(str, args),
                           "--out", str(tmp_path / "s.csv"), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


# ---- numbers that fail towards NORMAL --------------------------------------------------------

@pytest.mark.parametrize("threshold", [float("nan"), 2.0, 0.0, "0.5", float("inf")])
def test_a_joblib_model_with_a_bad_threshold_is_refused(model_path, tmp_path, threshold):
    bad = _resaved(model_path, tmp_path, lambda d: setattr(d, "threshold_", threshold))
    with pytest.raises(ModelFileError, match="threshold .* not a number strictly between 0 and 1"):
        load_model(bad)
    image = write_image(tmp_path / "x.png", phantom(64))
    assert score.main([str(image), "--model", str(bad), "--out", str(tmp_path / "s.csv"),
                       "--quiet"]) == score.EXIT_USAGE
    assert not (tmp_path / "s.csv").exists()


def test_a_joblib_model_with_a_nan_calibration_is_refused(model_path, tmp_path):
    def poison(decision):
        decision.calibrator_.model_.coef_ = np.array([[np.nan]])

    bad = _resaved(model_path, tmp_path, poison)
    with pytest.raises(ModelFileError, match="calibration's coef is not finite"):
        load_model(bad)


@pytest.mark.parametrize("field, value", [("threshold", float("nan")), ("threshold", "0.5"),
                                          ("threshold", 2.0), ("coef", float("nan")),
                                          ("intercept", "1")])
def test_an_export_with_a_bad_number_is_refused(export_dir, tmp_path, field, value):
    def edit(spec):
        if field == "threshold":
            spec["threshold"] = value
        else:
            spec["calibration"][field] = value

    folder = _edit_manifest(_copy_export(export_dir, tmp_path), edit)
    with pytest.raises(ModelFileError, match=field):
        load_onnx_model(folder)


# ---- unpickling, versions, sidecars -----------------------------------------------------------

def _unloadable_pickle(tmp_path, monkeypatch):
    """A joblib file of an object whose class lives in a module that is gone."""
    import joblib

    module = tmp_path / "mods" / "vanished_module_x.py"
    module.parent.mkdir()
    module.write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(module.parent))
    import vanished_module_x

    path = tmp_path / "m.joblib"
    joblib.dump({"metadata": {}, "model": vanished_module_x.Thing()}, path)
    del sys.modules["vanished_module_x"]
    shutil.rmtree(module.parent)
    path.with_name("m.joblib.sha256").write_text(f"{sha256_of(path)}  m.joblib\n")
    return path


def test_a_sha_matching_file_that_fails_to_unpickle_exits_2_in_one_line(tmp_path, monkeypatch):
    path = _unloadable_pickle(tmp_path, monkeypatch)
    with pytest.raises(ModelFileError, match="cannot be unpickled .*ModuleNotFoundError"):
        load_model(path)
    image = write_image(tmp_path / "x.png", phantom(64))
    code, err = _score([image, "--model", path], tmp_path)
    assert code == score.EXIT_USAGE
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot be unpickled" in err


def test_versions_are_checked_before_unpickling(model_path, tmp_path, monkeypatch):
    model, metadata = load_model(model_path)
    path = save_model(model, tmp_path / "m.joblib", metadata)
    sidecar = path.with_name("m.joblib.sha256").read_text()
    assert "# versions " in sidecar.splitlines()[1]
    real = persist.package_versions()
    monkeypatch.setattr(persist, "package_versions", lambda: {**real, "scikit-learn": "99.0"})

    def must_not_unpickle(*args, **kwargs):
        raise AssertionError("unpickled before the version check")

    monkeypatch.setattr(persist.joblib, "load", must_not_unpickle)
    with pytest.raises(ModelFileError, match="major versions differ"):
        load_model(path)


def test_an_uppercase_sidecar_is_accepted(model_path, tmp_path):
    path = tmp_path / "m.joblib"
    shutil.copy(model_path, path)
    digest = sha256_of(path)
    path.with_name("m.joblib.sha256").write_text(f"{digest.upper()}  m.joblib\r\n")
    load_model(path)  # as PowerShell's Get-FileHash writes it
    path.with_name("m.joblib.sha256").write_text(f"{digest[:-1].upper()}0  m.joblib\n")
    if not digest.endswith("0"):
        with pytest.raises(ModelFileError, match="does not match"):
            load_model(path)


# ---- ONNX integrity and runtime parameters ------------------------------------------------------

def _matmul_head(n_features, weight):
    """An ONNX head: P = sigmoid(X @ W), as ``probabilities`` [1 - P, P] (float64)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["features", "W"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"]),
             helper.make_node("Sub", ["one", "p"], ["q"]),
             helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, [None, 2])],
        initializer=[numpy_helper.from_array(np.full((n_features, 1), weight), "W"),
                     numpy_helper.from_array(np.ones((1, 1)), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("onnx_installed", [True, False], ids=["with onnx", "scoring install"])
def test_an_onnx_head_with_external_data_is_refused(export_dir, tmp_path, monkeypatch,
                                                    onnx_installed):
    import sys

    import onnx

    folder = _copy_export(export_dir, tmp_path)
    n_features = json.loads((folder / MANIFEST).read_text())["head"]["n_features"]
    head = _matmul_head(n_features, 0.01)
    onnx.save_model(head, str(folder / "head.onnx"))
    new_hash = sha256_of(folder / "head.onnx")
    _edit_manifest(folder, lambda spec: spec["files"].update({"head.onnx": new_hash}))
    if not onnx_installed:  # a scoring-only install has no onnx package
        monkeypatch.setitem(sys.modules, "onnx", None)
    load_onnx_model(folder)  # the same head with its weights inside loads
    # weights moved to a file the manifest does not list; head.onnx re-hashed
    onnx.save_model(head, str(folder / "head.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").exists()
    new_hash = sha256_of(folder / "head.onnx")
    _edit_manifest(folder, lambda spec: spec["files"].update({"head.onnx": new_hash}))
    with pytest.raises(ModelFileError, match="external data"):
        load_onnx_model(folder)


def test_an_export_asking_for_a_million_threads_is_refused(export_dir, tmp_path):
    with pytest.raises(ValueError, match="n_threads must be a whole number from 1 to 256"):
        onnx_model._make("features", {"class": "OnnxEmbedder", "params": {"n_threads": 1_000_000}})

    def many_jobs(spec):
        spec["pipeline"]["features"][0]["params"]["n_jobs"] = 1_000_000

    folder = _edit_manifest(_copy_export(export_dir, tmp_path), many_jobs)
    with pytest.raises(ModelFileError, match="n_jobs"):
        load_onnx_model(folder)
    ok = _edit_manifest(_copy_export(export_dir, tmp_path / "b"), lambda spec: spec["pipeline"][
        "features"][0]["params"].update(n_jobs=-1))
    load_onnx_model(ok)


# ---- site recalibration ------------------------------------------------------------------------

def test_recalibration_on_two_images_is_refused(model_path, tmp_path, capsys):
    site = tmp_path / "site"
    write_image(site / "NORMAL" / "IM-0001-0001.png", phantom(128, seed=1))
    write_image(site / "PNEUMONIA" / "person1_bacteria_1.png", pneumonia_phantom(128, 1))
    out = tmp_path / "site.joblib"
    assert calibrate.main(["--model", str(model_path), "--labelled-dir", str(site),
                           "--out", str(out)]) == 2
    assert "at least 5 of each" in capsys.readouterr().err
    assert not out.exists()
