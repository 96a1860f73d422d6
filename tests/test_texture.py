from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.feature import hog, local_binary_pattern

from xray_features._images import resize_to, to_uint8
from xray_features.texture import (HOGFeatures, LBPFeatures, hog_l2hys, hog_l2hys_batch,
                                   hog_length)

from .conftest import phantom

# hog_l2hys / hog_l2hys_batch against skimage.feature.hog: scikit-image sums
# each cell into a float32 accumulator, the fast version in float64, so values
# differ by float32 rounding (about 1e-7 at most, measured). One pixel put in
# the wrong orientation bin moves a feature by |gradient| / cell area / norm,
# orders of magnitude more than HOG_ATOL, so the tolerance also pins the bins.
HOG_ATOL = 1e-6


def _skimage_hog(image, orientations, cell, block):
    return hog(image, orientations=orientations, pixels_per_cell=(cell, cell),
               cells_per_block=(block, block), block_norm="L2-Hys", feature_vector=True)


def _as_dtype(image01, dtype):
    if dtype == np.uint8:
        return to_uint8(image01)
    return image01.astype(dtype)


def _synthetic_images():
    """(name, image in [0, 1]): phantoms, noise and small-integer images (whose
    gradients hit 0, 45, 90, 135 and 180 degrees, bin edges, exactly)."""
    rng = np.random.default_rng(20)
    yield "phantom128", phantom(128, seed=3)
    yield "phantom97", phantom(97, seed=4)  # not a multiple of any cell size below
    yield "phantom_crop", phantom(160, seed=5)[5:155, 3:133]  # 150 x 130
    yield "noise", rng.random((70, 83))
    yield "levels", rng.integers(0, 4, (64, 72)) / 3.0
    yield "flat", np.full((48, 48), 0.5)
    stripes = np.zeros((64, 64))
    stripes[:, ::4] = 1.0  # horizontal gradients only: +-0 and 180 degrees
    yield "stripes", stripes


def test_hog_equals_scikit_image():
    image = phantom(128, seed=3)
    ours = HOGFeatures(image_size=128, orientations=8, pixels_per_cell=16,
                       cells_per_block=2).transform([image])[0]
    ref = hog(image, orientations=8, pixels_per_cell=(16, 16), cells_per_block=(2, 2),
              block_norm="L2-Hys", feature_vector=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("orientations, cell, block", [(9, 16, 2), (8, 8, 3), (7, 10, 2),
                                                       (4, 6, 1), (12, 16, 2)])
def test_hog_l2hys_equals_scikit_image_on_synthetic_images(dtype, orientations, cell, block):
    for name, image01 in _synthetic_images():
        image = _as_dtype(image01, dtype)
        if min(image.shape) // cell < block:
            continue
        ref = _skimage_hog(image, orientations, cell, block)
        ours = hog_l2hys(image, orientations, cell, block)
        assert ours.dtype == ref.dtype, name
        assert ours.shape == ref.shape, name
        np.testing.assert_allclose(ours, ref, rtol=0, atol=HOG_ATOL, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_hog_l2hys_batch_rows_are_the_single_image_rows(dtype):
    rng = np.random.default_rng(7)
    images = np.stack([_as_dtype(phantom(100, seed=s), dtype) for s in range(5)]
                      + [_as_dtype(rng.random((100, 100)), dtype) for _ in range(6)])
    singles = np.stack([hog_l2hys(image, 9, 16, 2) for image in images])
    for chunk_size in (1, 3, 8, 64):
        batch = hog_l2hys_batch(images, 9, 16, 2, chunk_size=chunk_size)
        assert batch.dtype == singles.dtype
        np.testing.assert_array_equal(batch, singles)  # chunking never changes a row


def test_hog_l2hys_rejects_what_scikit_image_rejects():
    with pytest.raises(ValueError):
        hog_l2hys(np.zeros((20, 40), np.float32), 9, 16, 2)  # one cell row: no block
    with pytest.raises(ValueError):
        hog_l2hys_batch(np.zeros((2, 20, 40), np.float32), 9, 16, 2)
    with pytest.raises(ValueError):
        hog_l2hys_batch(np.zeros((40, 40), np.float32), 9, 16, 2)  # not a batch


def test_hog_of_real_films_equals_scikit_image(data_root):
    """A few train/ JPEGs: preprocessed and resized as HOGFeatures does, and raw
    uint8 (full size) through hog_l2hys."""
    from pipelines.assemble import extract_preprocessed

    paths = []
    for label in ("NORMAL", "PNEUMONIA"):
        paths += sorted(Path(data_root, "train", label).glob("*.jpeg"))[:3]
    assert len(paths) == 6
    films = extract_preprocessed(paths)
    ours = HOGFeatures().transform(films)
    ref = np.stack([_skimage_hog(resize_to(film, 128, 128), 9, 16, 2) for film in films])
    assert ours.dtype == ref.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=HOG_ATOL)
    for path in paths[::2]:
        raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_allclose(hog_l2hys(raw, 9, 16, 2), _skimage_hog(raw, 9, 16, 2),
                                   rtol=0, atol=HOG_ATOL, err_msg=str(path))


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
