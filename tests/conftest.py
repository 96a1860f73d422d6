"""Shared fixtures: synthetic images and folders; the real data via XRAY_DATA."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest


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
