"""Every estimator the packages define is checked, or says why it is not.

The estimators are discovered by walking `xray_features` and `pipelines`, so
a new one cannot be forgotten: it must join a `parametrize_with_checks` list
(here, in tests/test_sklearn_api.py or tests/test_subtype_heads.py) or
`NOT_CHECKED`, with the reason and the tests that cover it instead.
"""

import importlib
import inspect
import pkgutil

import pytest
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

import pipelines
import xray_features
from pipelines.decision import DecisionClassifier

from . import test_sklearn_api, test_subtype_heads

NOT_CHECKED = {
    "ReadImages": "takes file paths, not arrays: tests/test_io.py, tests/test_bad_inputs.py",
    "OnnxCNNClassifier": "takes batches of images and learns nothing: tests/test_cnn.py",
    "ScoreHead": "takes exactly one column, a probability: tests/test_cnn_pipeline.py",
    "PlattCalibrator": "maps 1-D probabilities: tests/test_assembly.py, tests/test_calibrate.py",
    "TemperatureScaler": "maps rows of class probabilities: tests/test_subtype_heads.py",
    "OnnxHead": "an exported head, built from model.json: tests/test_export.py",
    "HybridClassifier": "takes file paths or images: tests/test_api.py",
    "ImageTransformerMixin": "a base class: checked through every image step",
    "ImageFeatureExtractor": "a base class: checked through HOGFeatures and LBPFeatures",
}

_Y_01 = "labels are 0 (NORMAL) and 1 (PNEUMONIA) in a 1-D array; names: pipelines.api"
DECISION_EXPECTED_FAILURES = {
    "check_n_features_in": "the head's n_features_in_ (estimator_) is the record",
    "check_n_features_in_after_fitting": "the head's n_features_in_ (estimator_) is the record",
    "check_estimator_sparse_tag": "feature rows are dense; sparse input reaches the head as is",
    "check_estimator_sparse_array": "feature rows are dense; sparse input reaches the head as is",
    "check_estimator_sparse_matrix": "feature rows are dense; sparse input reaches the head as is",
    "check_classifier_data_not_an_array": "folds index X with numpy indexing",
    "check_classifiers_classes": _Y_01,
    "check_supervised_y_2d": _Y_01,
    "check_requires_y_none": _Y_01,
    "check_classifiers_train": "predict applies the out-of-fold threshold, not 0.5",
}


def discovered():
    """Names of the public estimator classes defined in the two packages."""
    names = set()
    for package in (xray_features, pipelines):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, BaseEstimator)
                        and obj.__module__ == module.__name__ and not name.startswith("_")):
                    names.add(name)
    return names


def test_every_estimator_is_checked_or_says_why():
    checked = {type(e).__name__ for e in test_sklearn_api.ESTIMATORS + test_subtype_heads.HEADS
               + DECISION_CHECKED}
    found = discovered()
    assert {"DecisionClassifier", "HOGFeatures", "OnnxCNNScore", "ScoreHead"} <= found
    missing = sorted(found - checked - set(NOT_CHECKED))
    assert not missing, f"estimators neither checked nor listed in NOT_CHECKED: {missing}"
    assert not set(NOT_CHECKED) - found, "NOT_CHECKED names a class that no longer exists"


DECISION_CHECKED = [DecisionClassifier(LogisticRegression(), cv=3)]


@parametrize_with_checks(DECISION_CHECKED,
                         expected_failed_checks=lambda e: DECISION_EXPECTED_FAILURES)
def test_decision_classifier_sklearn_checks(estimator, check):
    check(estimator)


def _classes(names):
    """The classes called ``names`` in the two packages, by name."""
    found = {}
    for package in (xray_features, pipelines):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            for name, obj in vars(importlib.import_module(info.name)).items():
                if name in names and inspect.isclass(obj) and obj.__module__ == info.name:
                    found[name] = obj
    return found


def _needs_arguments(cls):
    return any(p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
               for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self")


_UNCHECKED = _classes(set(NOT_CHECKED))


@pytest.mark.parametrize("name", sorted(n for n, c in _UNCHECKED.items()
                                        if not _needs_arguments(c)))
def test_not_checked_estimators_still_clone(name):
    """What the generic checks would have caught first: get_params / clone
    (the ones that construct without arguments; OnnxHead needs a file)."""
    from sklearn.base import clone

    estimator = _UNCHECKED[name]()
    assert clone(estimator).get_params() == estimator.get_params()
