"""Shared fixtures: synthetic images and folders; the real data via XRAY_DATA."""

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

# The studies in experiments/ are scripts, not a package: their tests import them
# from here (the one place the suite touches sys.path).
for _scripts in ("experiments", "experiments/cnn"):  # as `python experiments/[cnn/]X.py` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / _scripts))


def phantom(size=224, seed=0, lungs=True):
    """A synthetic chest X-ray: bright body on a dark background, two dark
    elliptical "lungs" inside it, a little noise. float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.float32)
    cv2.ellipse(image, (size // 2, size // 2), (int(size * 0.42), int(size * 0.46)), 0, 0, 360, 0.8, -1)
    if lungs:
        for centre_x in (int(size * 0.32), int(size * 0.68)):
            cv2.ellipse(image, (centre_x, int(size * 0.48)), (int(size * 0.12), int(size * 0.25)),
                        0, 0, 360, 0.25, -1)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


@pytest.fixture
def phantoms():
    return [phantom(seed=i) for i in range(6)]


def write_image(path, image01, bits=8):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    assert cv2.imwrite(str(path), (np.clip(image01, 0, 1) * scale).round().astype(dtype))
    return path


KAGGLE_FILES = {
    "train/NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "NORMAL2-IM-0007-0001.jpeg"],
    "train/PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_2.jpeg",
                        "person1_bacteria_3.jpeg", "odd name.jpeg"],
    "test/NORMAL": ["IM-0100-0001.jpeg"],
    "test/PNEUMONIA": ["person9_virus_1.jpeg"],
}


@pytest.fixture
def kaggle_tree(tmp_path):
    """A small Kaggle-layout folder of synthetic images (see KAGGLE_FILES)."""
    seed = 0
    for folder, files in KAGGLE_FILES.items():
        for name in files:
            write_image(tmp_path / folder / name, phantom(64, seed=seed))
            seed += 1
    return tmp_path


@pytest.fixture(scope="session")
def data_root():
    """The shared Kermany data; skipped only when XRAY_DATA is unset."""
    root = os.environ.get("XRAY_DATA")
    if not root:
        pytest.skip("XRAY_DATA is not set")
    root = Path(root)
    assert root.is_dir(), f"XRAY_DATA={root} does not exist"
    return root


def pneumonia_phantom(size=224, seed=0):
    """A phantom with hazy bright patches inside the lungs (a learnable signal)."""
    rng = np.random.default_rng(10_000 + seed)
    image = phantom(size, seed)
    for _ in range(6):
        x = int(size * rng.uniform(0.25, 0.75))
        y = int(size * rng.uniform(0.3, 0.65))
        cv2.circle(image, (x, y), int(size * 0.06), 0.7, -1)
    return np.clip(cv2.GaussianBlur(image, (0, 0), 2) + rng.normal(0, 0.02, image.shape), 0, 1)


def make_synthetic_set(root, n_per_class=12, size=128, split=None, start=0):
    """A labelled folder of synthetic images with Kermany-style names."""
    base = Path(root) / split if split else Path(root)
    for i in range(start, start + n_per_class):
        write_image(base / "NORMAL" / f"IM-{i:04d}-0001.png", phantom(size, seed=i))
        write_image(base / "PNEUMONIA" / f"person{i}_bacteria_1.png", pneumonia_phantom(size, i))
    return Path(root)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_set(root, 15, split="train")
    make_synthetic_set(root, 6, split="test", start=100)
    return root


@pytest.fixture(scope="session")
def trained_run(synthetic_data, tmp_path_factory):
    """One small `pipelines.run` over the synthetic set (shared by the CLI tests)."""
    from pipelines import run

    out = tmp_path_factory.mktemp("run")
    code = run.main(["--data", str(synthetic_data), "--features", "hog,hog+lbp",
                     "--heads", "logreg,xgb", "--cv", "3", "--n-boot", "50", "--quiet",
                     "--eval-dir", str(synthetic_data / "test"), "--out", str(out),
                     "--cache-dir", str(out / "cache")])
    assert code == 0
    return out


def copy_test_films(synthetic_data, folder, n):
    """``folder`` holding the first ``n`` synthetic test films as ``good<i>.png``."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted((synthetic_data / "test").rglob("*.png"))[:n]):
        shutil.copy(path, folder / f"good{i}.png")
    return folder


def interrupted_score_run(args, keep=3, before_first_write=False):
    """Run ``python -m pipelines.score`` on ``args``, stopped as a kill would stop
    it: after its first checkpoint of ``keep`` rows (the CSV and run record are
    what a killed run leaves), or before anything is written."""
    from pipelines import score

    real, calls = score.score_paths, []

    def stop(model, paths, **kwargs):
        if calls or before_first_write:
            raise KeyboardInterrupt
        calls.append(paths)
        return real(model, paths, **kwargs)

    score.score_paths = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            score.main(list(map(str, args)) + ["--batch-size", str(keep),
                                               "--checkpoint-seconds", "0"])
    finally:
        score.score_paths = real
