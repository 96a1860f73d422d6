"""The feature caches: same rows as no cache, reuse, and no stale hits."""

import numpy as np
import pytest

from pipelines.assemble import extract_features
from xray_features import CachedExtractor, CLAHE, HOGFeatures, ReadImages
from xray_features.preprocess import default_preprocessor

from .conftest import phantom, write_image


class CountingHOG(HOGFeatures):
    """HOGFeatures that counts the images it computes (class-level counter)."""

    computed = 0

    def transform(self, X):
        CountingHOG.computed += len(X)
        return super().transform(X)


@pytest.fixture
def image_files(tmp_path):
    return [write_image(tmp_path / "img" / f"{i}.png", phantom(96, seed=i)) for i in range(5)]


def test_cached_extractor_reuses_rows_and_matches_uncached(tmp_path, phantoms):
    CountingHOG.computed = 0
    cached = CachedExtractor(CountingHOG(image_size=64), tmp_path / "cache")
    first = cached.transform(phantoms)
    second = cached.transform(phantoms[::-1])
    assert CountingHOG.computed == len(phantoms)  # the second call read every row from disk
    np.testing.assert_array_equal(first, HOGFeatures(image_size=64).transform(phantoms))
    np.testing.assert_array_equal(second, first[::-1])
    assert first.dtype == np.float32


def test_cached_extractor_keys_on_parameters(tmp_path, phantoms):
    a = CachedExtractor(HOGFeatures(image_size=64), tmp_path).transform(phantoms)
    b = CachedExtractor(HOGFeatures(image_size=64, orientations=6), tmp_path).transform(phantoms)
    assert a.shape[1] != b.shape[1]
    # a runtime-only parameter shares the rows
    CountingHOG.computed = 0
    CachedExtractor(CountingHOG(image_size=64, n_jobs=2), tmp_path).transform(phantoms)
    np.testing.assert_array_equal(
        CachedExtractor(CountingHOG(image_size=64), tmp_path).transform(phantoms), a)


def test_warm_extract_features_skips_decoding(tmp_path, image_files, monkeypatch):
    cold = extract_features(image_files, ["hog", "lbp"], tmp_path / "cache", progress=False)
    uncached = extract_features(image_files, ["hog", "lbp"], None, progress=False)
    for name in cold:
        np.testing.assert_array_equal(cold[name], uncached[name])

    def no_reading(self, X):
        raise AssertionError("a warm run must not decode images")

    monkeypatch.setattr(ReadImages, "transform", no_reading)
    warm = extract_features(image_files, ["hog", "lbp"], tmp_path / "cache", progress=False)
    for name in cold:
        np.testing.assert_array_equal(warm[name], cold[name])


def test_file_cache_misses_when_content_or_preprocessing_changes(tmp_path, image_files):
    cache = tmp_path / "cache"
    before = extract_features(image_files, ["hog"], cache, progress=False)["hog"]
    write_image(image_files[2], phantom(96, seed=99))  # same name, new pixels
    after = extract_features(image_files, ["hog"], cache, progress=False)["hog"]
    np.testing.assert_array_equal(after[[0, 1, 3, 4]], before[[0, 1, 3, 4]])
    assert not np.array_equal(after[2], before[2])
    np.testing.assert_array_equal(after, extract_features(image_files, ["hog"], None,
                                                          progress=False)["hog"])

    other = default_preprocessor()
    other.set_params(clahe=CLAHE(clip_limit=4.0))
    changed = extract_features(image_files, ["hog"], cache, progress=False, preprocessor=other)
    np.testing.assert_array_equal(
        changed["hog"],
        extract_features(image_files, ["hog"], None, progress=False, preprocessor=other)["hog"])
    assert not np.array_equal(changed["hog"], after)


def _mean_embedder(path, scale):
    """A tiny ONNX 'embedder': one feature, ``scale`` times the image's mean."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("Mul", ["mean", "scale"], ["embedding"])],
        "mean_embedder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path


def test_a_model_file_replaced_at_the_same_path_is_not_served_from_the_cache(tmp_path, phantoms):
    from xray_features.cnn import OnnxEmbedder

    model = _mean_embedder(tmp_path / "embedder.onnx", scale=2.0)
    cached = CachedExtractor(OnnxEmbedder(model_path=model, image_size=16), tmp_path / "cache")
    first = cached.transform(phantoms)
    _mean_embedder(model, scale=3.0)  # new weights, same file name
    second = cached.transform(phantoms)
    np.testing.assert_allclose(second, first * 1.5, rtol=1e-5)
    np.testing.assert_array_equal(second, OnnxEmbedder(model_path=model, image_size=16)
                                  .transform(phantoms))


def test_new_library_versions_or_feature_code_start_new_rows(tmp_path, phantoms, monkeypatch):
    import xray_features.cache as cache_module

    environment = cache_module.feature_environment()
    for library in ("numpy=", "scikit-image=", "onnxruntime=", "code="):
        assert library in environment
    CountingHOG.computed = 0
    CachedExtractor(CountingHOG(image_size=64), tmp_path).transform(phantoms)
    monkeypatch.setattr(cache_module, "feature_environment", lambda: environment + " numpy=9")
    CachedExtractor(CountingHOG(image_size=64), tmp_path).transform(phantoms)
    assert CountingHOG.computed == 2 * len(phantoms)  # nothing reused across versions


def test_feature_code_digest_follows_the_source(tmp_path, monkeypatch):
    import xray_features.cache as cache_module

    source = tmp_path / "feature_module.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(cache_module, "FEATURE_MODULES", (str(source),))  # absolute: joined as is
    cache_module.feature_environment.cache_clear()
    try:
        before = cache_module.feature_environment()
        source.write_text("x = 2\n")
        cache_module.feature_environment.cache_clear()
        assert cache_module.feature_environment() != before
    finally:
        cache_module.feature_environment.cache_clear()


def test_a_missing_model_file_is_named_before_anything_is_cached(tmp_path, phantoms):
    from xray_features.cnn import OnnxEmbedder

    cached = CachedExtractor(OnnxEmbedder(model_path=tmp_path / "gone.onnx", image_size=16),
                             tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="ONNX model not found: .*gone.onnx"):
        cached.transform(phantoms)
    assert not (tmp_path / "cache").exists()
