import numpy as np
import pytest
from skimage.feature import hog, local_binary_pattern

from xray_features._images import to_uint8
from xray_features.texture import HOGFeatures, LBPFeatures, hog_length

from .conftest import phantom


def test_hog_equals_scikit_image():
    image = phantom(128, seed=3)
    ours = HOGFeatures(image_size=128, orientations=8, pixels_per_cell=16,
                       cells_per_block=2).transform([image])[0]
    ref = hog(image, orientations=8, pixels_per_cell=(16, 16), cells_per_block=(2, 2),
              block_norm="L2-Hys", feature_vector=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size, orientations, cell, block", [(128, 9, 16, 2), (96, 12, 8, 3),
                                                              (64, 6, 16, 1)])
def test_hog_length_formula(size, orientations, cell, block):
    extractor = HOGFeatures(image_size=size, orientations=orientations, pixels_per_cell=cell,
                            cells_per_block=block)
    out = extractor.transform([phantom(150)])
    expected = ((size // cell - block + 1) ** 2) * block * block * orientations
    assert out.shape == (1, expected) == (1, hog_length(size, orientations, cell, block))
    assert len(extractor.get_feature_names_out()) == expected


def test_lbp_equals_scikit_image_histograms():
    image = phantom(64, seed=1)
    ours = LBPFeatures(image_size=64, scales=((8, 1),), grid=2).transform([image])[0]
    codes = local_binary_pattern(to_uint8(image), 8, 1, method="uniform").astype(int)
    top_left = np.bincount(codes[:32, :32].ravel(), minlength=10) / (32 * 32)
    np.testing.assert_allclose(ours[:10], top_left, atol=1e-6)
    bottom_right = np.bincount(codes[32:, 32:].ravel(), minlength=10) / (32 * 32)
    np.testing.assert_allclose(ours[30:40], bottom_right, atol=1e-6)


def test_lbp_length_and_cell_histograms_sum_to_one():
    scales, grid = ((8, 1), (16, 2)), 3
    extractor = LBPFeatures(image_size=96, scales=scales, grid=grid)
    out = extractor.transform([phantom(120, seed=s) for s in range(2)])
    assert out.shape == (2, grid * grid * (10 + 18))
    assert len(extractor.get_feature_names_out()) == out.shape[1]
    first = out[:, : grid * grid * 10].reshape(2, grid * grid, 10)
    second = out[:, grid * grid * 10:].reshape(2, grid * grid, 18)
    np.testing.assert_allclose(first.sum(axis=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(second.sum(axis=2), 1.0, atol=1e-5)


@pytest.mark.parametrize("extractor", [HOGFeatures(), LBPFeatures()])
def test_float32_deterministic_and_batch_order_free(extractor):
    images = [phantom(160, seed=s) for s in range(5)]
    out = extractor.transform(images)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, extractor.transform(images))
    order = [3, 0, 4, 1, 2]
    np.testing.assert_array_equal(out[order], extractor.transform([images[i] for i in order]))
    np.testing.assert_array_equal(out[2:3], extractor.transform(images[2:3]))


@pytest.mark.parametrize("cls", [HOGFeatures, LBPFeatures])
def test_n_jobs_gives_the_same_features(cls):
    images = [phantom(128, seed=s) for s in range(70)]
    np.testing.assert_array_equal(cls(n_jobs=1).transform(images), cls(n_jobs=2).transform(images))
