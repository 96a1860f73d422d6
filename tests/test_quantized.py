"""The packaged static int8 networks (`experiments/quantize_cnn.py`) against
their fp32 originals, and the int8 default against the fp32 default.

Tolerances, from the measurements in docs/performance.md (all 5,216 train/
films): the classifier's logit moves by at most 1.54 (median 0.109) and 17 of
5,216 decisions change; the embedder's cosine to fp32 is at least 0.955
(median 0.985). The tests allow a margin over those figures, and pin the
structure that makes them hold: the pooling and what follows stay in float.
"""

import numpy as np
import onnx
import pytest

from sklearn.pipeline import FeatureUnion, Pipeline

from pipelines.assemble import extract_preprocessed, with_network
from pipelines.decision import logit
from pipelines.persist import load_model
from xray_features.cnn import MODELS_DIR, PACKAGED_SHA256, OnnxCNNScore, OnnxEmbedder
from xray_features.dataset import index_dataset
from xray_features.preprocess import default_preprocessor

from .conftest import phantom, pneumonia_phantom

PAIRS = {"classifier": ("cnn_ft224_cs_acq_cs.onnx", "cnn_ft224_cs_acq_cs.int8.onnx"),
         "embedder": ("efficientnet_lite0_embedder.onnx", "efficientnet_lite0_embedder.int8.onnx")}
MAX_DLOGIT, MEDIAN_DLOGIT = 2.0, 0.2        # measured 1.54 / 0.109 on train/
MIN_COSINE, MEDIAN_COSINE = 0.94, 0.98      # measured 0.955 / 0.985 on train/
MAX_CHANGED_SHARE = 0.01                    # measured 17 / 5,216 on train/, 2 / 308 on site_val


def _logit(p):
    return logit(np.ravel(p), eps=1e-7)


def _outputs(films, kind):
    fp32, int8 = PAIRS[kind]
    make = OnnxEmbedder if kind == "embedder" else OnnxCNNScore
    return make(model_path=fp32).transform(films), make(model_path=int8).transform(films)


def _check(fp32, int8, kind):
    if kind == "embedder":
        cosine = np.sum(fp32 * int8, 1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
        assert cosine.min() >= MIN_COSINE and np.median(cosine) >= MEDIAN_COSINE, cosine
    else:
        shift = np.abs(_logit(int8) - _logit(fp32))
        assert shift.max() <= MAX_DLOGIT and np.median(shift) <= MEDIAN_DLOGIT, shift


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_int8_networks_are_packaged_and_checked(kind):
    for name in PAIRS[kind]:
        assert name in PACKAGED_SHA256 and (MODELS_DIR / name).is_file()
    fp32, int8 = (MODELS_DIR / name for name in PAIRS[kind])
    assert int8.stat().st_size < fp32.stat().st_size / 3  # int8 weights


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_int8_graph_keeps_the_pooling_and_head_in_float(kind):
    """Quantized convolutions, and no quantize/dequantize pair at or after the
    global pooling: an 8-bit output would leave ~90 distinct probabilities."""
    graph = onnx.load(str(MODELS_DIR / PAIRS[kind][1])).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 40 and "DequantizeLinear" in ops
    pool = max(i for i, op in enumerate(ops) if op in ("ReduceMean", "GlobalAveragePool"))
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops[pool:])
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_int8_outputs_follow_fp32_on_synthetic_films(kind):
    films = default_preprocessor().transform(
        [phantom(256, seed=s) for s in range(3)] + [pneumonia_phantom(256, seed=s) for s in range(3)])
    _check(*_outputs(films, kind), kind)


def test_int8_default_is_the_fp32_default_with_the_int8_network():
    """Same steps, calibration and threshold; only the network file differs."""
    int8, meta8 = load_model("default_pipeline.joblib")
    fp32, meta32 = load_model("default_pipeline_fp32.joblib")
    assert meta8["network"] == PAIRS["classifier"][1] and meta32["network"] == PAIRS["classifier"][0]
    assert meta8["quantized_from"] == PAIRS["classifier"][0]
    assert int8.steps[-1][1].threshold_ == fp32.steps[-1][1].threshold_
    probe = np.linspace(0.01, 0.99, 9)
    np.testing.assert_array_equal(int8.steps[-1][1].calibrator_.transform(probe),
                                  fp32.steps[-1][1].calibrator_.transform(probe))
    rebuilt = with_network(fp32, PAIRS["classifier"][1])
    assert repr(rebuilt) == repr(int8)


def test_with_network_refuses_what_it_cannot_swap():
    fp32, _ = load_model("default_pipeline_fp32.joblib")
    with pytest.raises(ValueError, match="another preprocessing"):
        with_network(fp32, "cnn_small64_noaug.onnx")
    hybrid = Pipeline([*fp32.steps[:2], ("features", FeatureUnion([("cnn", OnnxEmbedder())])),
                       fp32.steps[-1]])
    with pytest.raises(ValueError, match="pure-CNN pipeline"):
        with_network(hybrid, PAIRS["classifier"][1])


@pytest.mark.data
@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_int8_outputs_follow_fp32_on_real_films(data_root, kind):
    index = index_dataset(data_root)
    paths = [*index.subset("train").paths[7::40], *index.subset("val").paths]
    films = extract_preprocessed(paths)
    _check(*_outputs(films, kind), kind)


@pytest.mark.data
def test_int8_default_changes_few_decisions_on_real_films(data_root):
    index = index_dataset(data_root)
    paths = [*index.subset("train").paths[3::25], *index.subset("val").paths]
    int8, _ = load_model("default_pipeline.joblib")
    fp32, _ = load_model("default_pipeline_fp32.joblib")
    changed = np.mean(int8.predict(paths) != fp32.predict(paths))
    assert changed <= MAX_CHANGED_SHARE
