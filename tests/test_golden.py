"""Golden values: features and the packaged default's scores on fixed synthetic films.

A change to the feature code, a library upgrade or a replaced model file that
moves what the pipeline computes fails here, instead of silently changing the
features (and the cached rows) every figure is built on. The values live in
``tests/golden_values.json``; after a deliberate change, rewrite them with

    python -m tests.test_golden

and say in the commit why they moved.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from xray_features.cnn import OnnxEmbedder
from xray_features.preprocess import default_preprocessor
from xray_features.texture import HOGFeatures, LBPFeatures

from .conftest import phantom, pneumonia_phantom

GOLDEN = Path(__file__).with_name("golden_values.json")
# features: float32 arithmetic, so a few ulps of slack; the networks: onnxruntime
# kernels may reorder sums between versions
TOLERANCE = {"hog": (1e-5, 1e-6), "lbp": (1e-5, 1e-6), "embedder": (1e-4, 1e-4),
             "default_probability": (0, 1e-4), "default_fp32_probability": (0, 1e-4)}


def _films():
    return default_preprocessor().transform([phantom(256, seed=0), pneumonia_phantom(256, seed=1)])


def _summary(rows):
    """Per row: 16 evenly spaced entries, the sum and the sum of squares."""
    rows = np.asarray(rows, dtype=np.float64)
    picks = np.linspace(0, rows.shape[1] - 1, 16).astype(int)
    return [[*row[picks].tolist(), float(row.sum()), float((row ** 2).sum())] for row in rows]


def compute():
    """What the pipeline computes today on the fixed films."""
    from pipelines.persist import load_model
    from pipelines.score import DEFAULT_MODEL

    films = _films()
    raw = [phantom(256, seed=0), pneumonia_phantom(256, seed=1)]
    probability = {name: load_model(path)[0][1:].predict_proba(raw)[:, 1].tolist()
                   for name, path in (("default_probability", DEFAULT_MODEL),
                                      ("default_fp32_probability", "default_pipeline_fp32.joblib"))}
    return {"hog": _summary(HOGFeatures().transform(films)),
            "lbp": _summary(LBPFeatures().transform(films)),
            "embedder": _summary(OnnxEmbedder().transform(films)), **probability}


@pytest.fixture(scope="module")
def computed():
    return compute()


@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_golden_values(computed, name):
    expected = json.loads(GOLDEN.read_text())[name]
    rtol, atol = TOLERANCE[name]
    np.testing.assert_allclose(computed[name], expected, rtol=rtol, atol=atol,
                               err_msg=f"{name} moved: see this module's docstring")


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
