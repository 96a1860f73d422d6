"""Dask scoring gives exactly the rows of local scoring (needs the dask extra)."""

import builtins
import shutil

import numpy as np
import pytest

from pipelines.assemble import make_pipeline
from pipelines.persist import ModelFileError, save_model
from pipelines.score import score_paths

from .conftest import phantom, pneumonia_phantom, write_image

distributed = pytest.importorskip("distributed")

from pipelines.dask_scoring import (  # noqa: E402
    INSTALL_HINT, DaskUnavailableError, _require_distributed, score_on_dask)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_model")
    paths, labels = [], []
    for i in range(15):
        paths.append(str(write_image(root / f"n{i}.png", phantom(64, seed=i))))
        paths.append(str(write_image(root / f"p{i}.png", pneumonia_phantom(64, seed=i))))
        labels += [0, 1]
    model = make_pipeline("hog", "logreg", cv=3).fit(paths, np.array(labels))
    path = root / "hog-logreg.joblib"
    save_model(model, path, {"feature_set": "hog", "head": "logreg",
                             "threshold": float(model.steps[-1][1].threshold_)})
    return path, model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_inputs")
    paths = []
    for i in range(198):
        make = pneumonia_phantom if i % 2 else phantom
        paths.append(str(write_image(root / f"img{i:03d}.png", make(48, seed=1000 + i))))
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    paths.insert(37, str(root / "empty.png"))
    paths.insert(150, str(root / "text.png"))
    return paths


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as local:
        yield local


def test_rows_identical_to_local_scoring(saved_model, inputs, cluster):
    path, model = saved_model
    local = []
    for start in range(0, len(inputs), 64):
        local += score_paths(model, inputs[start:start + 64])
    rows = score_on_dask(path, inputs, scheduler=cluster.scheduler_address, batch_size=64)
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert rows == local
    assert [row["path"] for row in rows] == inputs
    assert sum(row["status"] == "error" for row in rows) == 2
    assert rows[37]["status"] == rows[150]["status"] == "error"
    # batching does not change the rows
    assert score_on_dask(path, inputs[:70], scheduler=cluster.scheduler_address,
                         batch_size=16) == local[:70]


def test_workers_refuse_a_tampered_model(saved_model, inputs, cluster, tmp_path):
    path, _ = saved_model
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    shutil.copy(str(path) + ".sha256", str(copy) + ".sha256")
    with open(copy, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ModelFileError, match="sidecar"):
        score_on_dask(copy, inputs[:3], scheduler=cluster.scheduler_address)


def test_bad_scheduler_and_empty_input(saved_model):
    path, _ = saved_model
    assert score_on_dask(path, [], scheduler="nowhere") == []
    with pytest.raises(ValueError, match="scheduler"):
        score_on_dask(path, ["a.png"], scheduler="nowhere")


def test_clear_message_without_distributed(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DaskUnavailableError, match=r"xray-hybrid\[dask\]") as info:
        _require_distributed()
    assert INSTALL_HINT in str(info.value)


def test_score_cli_dask_flag_writes_the_same_csv(saved_model, inputs, cluster, tmp_path):
    from pipelines import score

    path, _ = saved_model
    local_csv, dask_csv = tmp_path / "local.csv", tmp_path / "dask.csv"
    subset = inputs[:40]
    assert score.main(subset + ["--model", str(path), "--out", str(local_csv), "--quiet"]) == 1
    assert score.main(subset + ["--model", str(path), "--out", str(dask_csv), "--quiet",
                                "--dask", cluster.scheduler_address]) == 1
    assert dask_csv.read_text() == local_csv.read_text()


def test_feature_extraction_on_dask_equals_local(cluster, tmp_path):
    from pipelines.assemble import extract_features
    from pipelines.dask_scoring import extract_features_on_dask

    paths = [str(write_image(tmp_path / f"x{i}.png", phantom(80, seed=i))) for i in range(11)]
    local = extract_features(paths, ["hog", "lbp"], None, progress=False)
    with distributed.Client(cluster) as client:
        remote = extract_features_on_dask(paths, ["hog", "lbp"], tmp_path / "cache",
                                          scheduler=client, chunk_size=4)
    for name in local:
        np.testing.assert_array_equal(remote[name], local[name])


def test_run_cli_dask_flag_gives_the_same_cv(cluster, tmp_path):
    from pipelines import run

    for i in range(12):
        write_image(tmp_path / "data" / "NORMAL" / f"IM-{i:04d}-0001.png", phantom(64, seed=i))
        write_image(tmp_path / "data" / "PNEUMONIA" / f"person{i}_virus_1.png",
                    pneumonia_phantom(64, seed=i))
    address = cluster.scheduler_address
    common = ["--data", str(tmp_path / "data"), "--features", "hog", "--heads", "logreg",
              "--cv", "3", "--n-boot", "20", "--no-save", "--quiet", "--augment", "none"]
    assert run.main(common + ["--out", str(tmp_path / "local"), "--cache-dir", "none"]) == 0
    assert run.main(common + ["--out", str(tmp_path / "dask"), "--cache-dir", "none",
                              "--dask", address]) == 0
    import json
    a = json.loads((tmp_path / "local" / "metrics.json").read_text())["models"]
    b = json.loads((tmp_path / "dask" / "metrics.json").read_text())["models"]
    assert a["hog/logreg"]["cv"] == b["hog/logreg"]["cv"]
