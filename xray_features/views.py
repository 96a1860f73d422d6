"""Test-time views: the features of several views of each image, side by side.

`ViewFeatures` runs ``view -> preprocessor -> features`` for the image itself
and for each view (e.g. `BorderCrop` zoom-ins) and stacks the results as
equal blocks of columns, the layout `pipelines.decision.DecisionClassifier`
averages over with ``n_views``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from ._images import ImageTransformerMixin
from .preprocess import BorderCrop

__all__ = ["ViewFeatures", "ZOOM_VIEWS", "zoom_views", "view_preprocessor"]

# the test-time zoom-ins measured in experiments/image_study.py: 5 % and 10 % off every side
ZOOM_VIEWS = (0.05, 0.1)


def zoom_views(fractions=ZOOM_VIEWS):
    """One `BorderCrop` per fraction."""
    return [BorderCrop(fraction) for fraction in fractions]


def view_preprocessor(view, preprocessor):
    """``view -> preprocessor`` as one step (for extracting a view's features alone)."""
    return Pipeline([("view", clone(view)), ("preprocess", clone(preprocessor))])


class ViewFeatures(ImageTransformerMixin):
    """``features(preprocessor(image))`` followed by ``features(preprocessor(view(image)))``
    for each of ``views``, as one row per image.

    Parameters
    ----------
    preprocessor : image transformer (e.g. `default_preprocessor()`)
    features : transformer from preprocessed images to a feature matrix
    views : list of image transformers, applied before ``preprocessor``
    """

    def __init__(self, preprocessor, features, views=()):
        self.preprocessor = preprocessor
        self.features = features
        self.views = views

    def transform(self, X):
        """The features of each image and of each of its views, side by side."""
        blocks = [self.features.transform(self.preprocessor.transform(X))]
        for view in self.views:
            blocks.append(self.features.transform(self.preprocessor.transform(view.transform(X))))
        return np.hstack(blocks)

    @property
    def n_views(self):
        """How many feature blocks a row holds: the image and its views."""
        return 1 + len(self.views)
