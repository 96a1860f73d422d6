"""sklearn conventions: estimator checks, clone and pickle round-trips."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from xray_features import CLAHE, CachedExtractor, HOGFeatures, LBPFeatures, LungCrop, Resize
from stress import EqualizeSharpness, Intensity  # experiments/cnn/stress.py: the studies' own steps
from transforms import EqualizeHistogram  # experiments/transforms.py
from xray_features.augment import RandomZoom, Stretch
from xray_features.preprocess import BorderCrop
from xray_features.views import ViewFeatures
from xray_features.cnn import OnnxCNNScore, OnnxEmbedder

from .conftest import phantom

# 2-D input reaches these transformers as n images of one row each (see
# xray_features._images.as_images); checks that need more are listed here.
_IMAGE_OUT = "output is a batch of images, not a feature table"
_NO_N_FEATURES = "images vary in size, so there is no fixed n_features_in_"
_LIST_OUT = "crops differ in shape, so a list is returned, not an array"
_ALL = {"check_n_features_in": _NO_N_FEATURES,
        "check_n_features_in_after_fitting": _NO_N_FEATURES}
_IMAGES = {**_ALL, "check_transformer_get_feature_names_out": _IMAGE_OUT,
           "check_transformer_get_feature_names_out_pandas": _IMAGE_OUT}
EXPECTED_FAILURES = {
    "CLAHE": _IMAGES,
    "Resize": _IMAGES,
    "Stretch": _IMAGES,
    "RandomZoom": _IMAGES,
    "Intensity": _IMAGES,
    "EqualizeSharpness": _IMAGES,
    "EqualizeHistogram": _IMAGES,
    "BorderCrop": _IMAGES,
    "LungCrop": {**_IMAGES, **{name: _LIST_OUT for name in [
        "check_transformer_general", "check_transformer_preserve_dtypes",
        "check_transformer_data_not_an_array", "check_transformers_unfitted_stateless"]}},
}


ESTIMATORS = [CLAHE(), LungCrop(), Resize(size=16), Stretch(vertical=1.3), RandomZoom(),
              Intensity(gamma=0.8, contrast=0.9, black=0.05), EqualizeSharpness(target=50.0), EqualizeHistogram(),
              BorderCrop(fraction=0.1), HOGFeatures(image_size=32),
              LBPFeatures(image_size=32, grid=2), CachedExtractor(HOGFeatures(image_size=32)),
              OnnxEmbedder(batch_size=16), OnnxCNNScore(batch_size=16),
              ViewFeatures(Resize(size=32), HOGFeatures(image_size=32), [BorderCrop(fraction=0.1)])]


def _expected(estimator):
    return EXPECTED_FAILURES.get(type(estimator).__name__, _ALL)


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_and_pickle_round_trip(estimator):
    images = [phantom(96, seed=s) for s in range(3)]
    expected = estimator.fit(images).transform(images)
    for twin in (clone(estimator), pickle.loads(pickle.dumps(estimator))):
        got = twin.fit(images).transform(images)
        if isinstance(expected, list):
            for a, b in zip(expected, got):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(expected, got)
