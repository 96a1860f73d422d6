import numpy as np
import pytest

from transforms import EqualizeHistogram
from xray_features.preprocess import CLAHE, BorderCrop, LungCrop, Resize, default_preprocessor

from .conftest import phantom


def _rms_contrast(image):
    return float(image.std())


def test_clahe_raises_contrast_of_a_flat_image():
    low = 0.45 + 0.08 * phantom(128)  # all values within [0.45, 0.53]
    out = CLAHE(clip_limit=2.0).transform([low])[0]
    assert out.shape == low.shape and out.dtype == np.float32
    assert np.ptp(out) > 1.5 * np.ptp(low)
    assert _rms_contrast(out) > 1.3 * _rms_contrast(low)
    stronger = CLAHE(clip_limit=6.0).transform([low])[0]
    assert _rms_contrast(stronger) > 1.5 * _rms_contrast(out)  # the clip limit bounds the gain
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_clahe_keeps_array_type():
    batch = np.stack([phantom(64, seed=i) for i in range(3)])
    assert CLAHE().transform(batch).shape == batch.shape
    assert isinstance(CLAHE().transform(list(batch)), list)


def test_lung_crop_finds_the_two_phantom_lungs():
    image = phantom(224)
    crop = LungCrop(margin=0.0, min_box=0.0)
    box = crop.find_boxes([image])[0]
    assert box.found
    # lungs span x in [0.20, 0.80] and y in [0.23, 0.73] of the phantom
    assert abs(box.left - 0.20 * 224) < 8 and abs(box.right - 0.80 * 224) < 8
    assert abs(box.top - 0.23 * 224) < 8 and abs(box.bottom - 0.73 * 224) < 8
    out = crop.transform([image])[0]
    assert out.shape == (box.bottom - box.top, box.right - box.left)


def test_lung_crop_mirrors_a_single_lung():
    image = phantom(224)
    image[:, 112:] = np.fliplr(image[:, :112]) * 0 + image[:, 112:].clip(0.8, 0.8)
    image[:, 112:][phantom(224)[:, 112:] < 0.05] = 0  # keep the dark background
    box = LungCrop(margin=0.0, min_box=0.0).find_boxes([image])[0]
    assert box.found
    assert abs((box.left + box.right) / 2 - 112) < 4  # symmetric about the midline


@pytest.mark.parametrize("image", [np.zeros((200, 180), np.float32),
                                   np.ones((50, 60), np.float32) * 0.5,
                                   np.zeros((3, 500), np.float32)])
def test_lung_crop_falls_back_to_centre(image):
    crop = LungCrop(fallback_fraction=0.8)
    box = crop.find_boxes([image])[0]
    assert not box.found
    height, width = image.shape
    assert box.bottom - box.top == max(1, round(0.8 * height))
    assert box.right - box.left == max(1, round(0.8 * width))
    assert crop.transform([image])[0].size > 0


def test_resize_pad_keeps_aspect_ratio():
    image = np.ones((100, 200), np.float32)
    out = Resize(size=64, mode="pad").transform([image])
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    rows = np.flatnonzero(out[0].max(axis=1) > 0.5)
    assert len(rows) == 32 and rows[0] == 16  # 2:1 image -> 64x32 band, centred
    squash = Resize(size=64, mode="squash").transform([image])
    np.testing.assert_allclose(squash, 1.0, rtol=1e-6)


def test_resize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        Resize(mode="stretch").transform([np.zeros((8, 8))])


def test_default_preprocessor_output():
    out = default_preprocessor(size=96).fit_transform([phantom(200), phantom(150, seed=2)])
    assert out.shape == (2, 96, 96) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("bad", [[np.zeros((4, 4, 3))], [np.full((8, 8), np.nan)], []])
def test_bad_batches_are_refused(bad):
    with pytest.raises(ValueError):
        CLAHE().transform(bad)


def test_default_preprocessor_squashes_like_the_training_images():
    """The training images were squashed to squares, so real-shaped inputs are
    squashed too (pad-resizing them cost accuracy: docs/findings.md)."""
    wide = phantom(300)[50:250]  # 200 x 300
    out = default_preprocessor(size=64).transform([wide])[0]
    expected = Resize(64, mode="squash").transform(CLAHE().transform([wide]))[0]
    np.testing.assert_array_equal(out, expected)
    padded = default_preprocessor(size=64, resize_mode="pad").transform([wide])[0]
    assert np.all(padded[:8] == 0) and out[:8].max() > 0  # pad bands only when asked for
    assert default_preprocessor().get_params()["resize__mode"] == "squash"


def test_border_crop_cuts_the_same_fraction_off_every_side():
    image = np.arange(100 * 80, dtype=np.float32).reshape(100, 80) / (100 * 80)
    cropped = BorderCrop(fraction=0.1).transform(image[None])[0]
    np.testing.assert_array_equal(cropped, image[10:90, 8:72])


def test_border_crop_keeps_a_pixel_and_refuses_half():
    assert BorderCrop(fraction=0.45).transform(np.ones((1, 1, 3), np.float32)).shape == (1, 1, 1)
    with pytest.raises(ValueError, match="fraction"):
        BorderCrop(fraction=0.5).transform(np.ones((1, 8, 8), np.float32))


def test_equalize_histogram_undoes_exposure_and_spreads_the_levels():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 64, size=(64, 64))
    dim = (100 + levels).astype(np.float32) / 255.0        # a dark, flat film
    bright = (150 + 1.5 * levels).astype(np.float32) / 255.0  # the same film, exposed differently
    out_dim, out_bright = EqualizeHistogram().transform(np.stack([dim, bright]))
    np.testing.assert_array_equal(out_dim, out_bright)
    assert out_dim.min() < 0.05 and out_dim.max() == 1.0
    order = np.argsort(dim, axis=None, kind="stable")
    assert np.all(np.diff(out_dim.ravel()[order]) >= 0)  # a monotone grey-level map
