"""Counter-squash augmentation: geometry of the stretch, and cached copies."""

import cv2
import numpy as np
import pytest

from pipelines.assemble import (extract_counter_squash_features, extract_training_copies,
                                extract_zoom_features, make_extractor)
from xray_features import ReadImages
from stress import Intensity  # experiments/cnn/stress.py
from xray_features.augment import (NORMAL_TO_PNEUMONIA_ASPECT, RandomZoom, Stretch, counter_squash,
                                   counter_squash_copies)
from xray_features.preprocess import BorderCrop, default_preprocessor
from xray_features.views import view_preprocessor

from .conftest import phantom, write_image


def _disc(size=200, radius=40):
    image = np.zeros((size, size), np.float32)
    cv2.circle(image, (size // 2, size // 2), radius, 1.0, -1)
    return image


def _extent(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_stretch_keeps_shape_and_scales_each_axis():
    disc = _disc()
    assert np.array_equal(Stretch().transform([disc])[0], disc)
    out = Stretch(vertical=1.5, horizontal=1.2).transform([disc])[0]
    assert out.shape == disc.shape
    height, width = _extent(out > 0.5)
    assert height == pytest.approx(81 * 1.5, abs=3)
    assert width == pytest.approx(81 * 1.2, abs=3)
    with pytest.raises(ValueError, match=">= 1"):
        Stretch(vertical=0.8).transform([disc])


def test_counter_squash_narrows_normal_and_widens_pneumonia():
    disc = _disc()
    copies, labels = counter_squash_copies([disc, disc], [0, 1])
    assert list(labels) == [0, 1]
    (h0, w0), (h1, w1) = _extent(copies[0] > 0.5), _extent(copies[1] > 0.5)
    assert h0 / w0 == pytest.approx(NORMAL_TO_PNEUMONIA_ASPECT, rel=0.05)  # looks narrower
    assert w1 / h1 == pytest.approx(NORMAL_TO_PNEUMONIA_ASPECT, rel=0.05)  # looks wider
    assert h0 == w1 and w0 == h1  # the same zoom, mirrored: the crop does not tell them apart


def test_counter_squash_features_follow_read_stretch_preprocess(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", phantom(120, seed=i)) for i in range(4)]
    labels = np.array([0, 1, 1, 0])
    got = extract_counter_squash_features(paths, labels, ["hog"], tmp_path / "cache",
                                          progress=False)["hog"]
    pre, hog = default_preprocessor(), make_extractor("hog")
    for path, label, row in zip(paths, labels, got):
        image = ReadImages().transform([path])
        expected = hog.transform(pre.transform(list(counter_squash(label).transform(image))))
        np.testing.assert_array_equal(row, expected[0])
    again = extract_counter_squash_features(paths, labels, ["hog"], tmp_path / "cache",
                                            progress=False)["hog"]
    np.testing.assert_array_equal(again, got)


def test_random_zoom_is_a_border_crop_resized_back_with_a_reproducible_draw():
    images = np.stack([phantom(96, seed=s) for s in range(6)])
    zoom = RandomZoom(max_fraction=0.2, random_state=3)
    out = zoom.transform(images)
    assert out.shape == images.shape
    fractions = [zoom.fraction(image) for image in images]
    assert all(0 <= f <= 0.2 for f in fractions) and len(set(fractions)) == len(fractions)
    for image, fraction, got in zip(images, fractions, out):
        crop = BorderCrop(fraction).transform(image[None])[0]
        np.testing.assert_array_equal(got, cv2.resize(crop, (96, 96), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(RandomZoom(0.2, random_state=3).transform(images[::-1]), out[::-1])
    assert RandomZoom(0.2, random_state=4).fraction(images[0]) != fractions[0]


def test_random_zoom_refuses_bad_parameters():
    with pytest.raises(ValueError, match="max_fraction"):
        RandomZoom(max_fraction=0.5).transform(np.ones((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="random_state"):
        RandomZoom(random_state=np.random.RandomState(0)).transform(np.ones((1, 8, 8), np.float32))








def test_intensity_known_values():
    ramp = np.tile(np.linspace(0, 1, 5, dtype=np.float32), (2, 1))[None]
    np.testing.assert_allclose(Intensity().transform(ramp), ramp, atol=1e-7)
    np.testing.assert_allclose(Intensity(gamma=2).transform(ramp)[0, 0], [0, 1 / 16, 1 / 4, 9 / 16, 1])
    # contrast 0.5 about the mean 0.5: [0.25, 0.375, 0.5, 0.625, 0.75]
    np.testing.assert_allclose(Intensity(contrast=0.5).transform(ramp)[0, 0],
                               [0.25, 0.375, 0.5, 0.625, 0.75], atol=1e-7)
    np.testing.assert_allclose(Intensity(black=0.2).transform(ramp)[0, 0], [0.2, 0.4, 0.6, 0.8, 1.0],
                               atol=1e-7)


def test_intensity_keeps_the_order_of_grey_levels_and_the_range():
    images = np.stack([phantom(64, seed=s) for s in range(3)])
    for step in (Intensity(gamma=0.8, contrast=0.85, black=0.05), Intensity(gamma=1.25, contrast=1.3)):
        out = step.transform(images)
        assert out.dtype == np.float32 and out.shape == images.shape
        assert out.min() >= 0 and out.max() <= 1
        for image, got in zip(images, out):
            order = np.argsort(image, axis=None, kind="stable")
            assert np.all(np.diff(got.ravel()[order]) >= -1e-6)  # monotone: nothing reordered
    assert Intensity(black=0.05).transform(images).min() >= 0.05 - 1e-7


def test_intensity_refuses_bad_parameters():
    for bad in ({"gamma": 0}, {"contrast": -1}, {"black": 1.0}):
        with pytest.raises(ValueError, match="gamma > 0"):
            Intensity(**bad).transform(np.ones((1, 8, 8), np.float32))


def test_zoomed_counter_squash_features_follow_read_stretch_zoom_preprocess(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", phantom(120, seed=i)) for i in range(4)]
    labels = np.array([0, 1, 1, 0])
    got = extract_counter_squash_features(
        paths, labels, ["hog"], tmp_path / "cache", progress=False,
        preprocessor=view_preprocessor(RandomZoom(0.1), default_preprocessor()))["hog"]
    plain = extract_counter_squash_features(paths, labels, ["hog"], tmp_path / "cache",
                                            progress=False)["hog"]
    pre, hog = default_preprocessor(), make_extractor("hog")
    for path, label, row, unzoomed in zip(paths, labels, got, plain):
        stretched = counter_squash(label).transform(ReadImages().transform([path]))
        zoomed = RandomZoom(0.1).transform(stretched)
        np.testing.assert_array_equal(row, hog.transform(pre.transform(zoomed))[0])
        assert not np.array_equal(row, unzoomed)  # its own cache entry, not the plain copy's


def test_zoom_copies_follow_read_zoom_preprocess_and_join_the_counter_squash_ones(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", phantom(120, seed=i)) for i in range(4)]
    labels = np.array([0, 1, 1, 0])
    got = extract_zoom_features(paths, ["hog"], tmp_path / "cache", progress=False)["hog"]
    pre, hog = default_preprocessor(), make_extractor("hog")
    for path, row in zip(paths, got):
        zoomed = RandomZoom(0.1).transform(ReadImages().transform([path]))
        np.testing.assert_array_equal(row, hog.transform(pre.transform(zoomed))[0])
    squashed, zoomed = extract_training_copies("counter-squash+zoom", paths, labels, ["hog"],
                                               tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(zoomed["hog"], got)
    np.testing.assert_array_equal(squashed["hog"], extract_counter_squash_features(
        paths, labels, ["hog"], tmp_path / "cache", progress=False)["hog"])
    assert extract_training_copies("none", paths, labels, ["hog"]) == []
    _, reseeded = extract_training_copies("counter-squash+zoom", paths, labels, ["hog"],
                                          random_state=1, progress=False)
    assert not np.array_equal(reseeded["hog"], got)  # the run's --seed reaches the zooms
