"""The last step of a three-class model (NORMAL / BACTERIAL / VIRAL): a
multi-class head whose probabilities are calibrated, and turned into a class,
from out-of-fold training predictions only.

The decision rule (``decision="thresholds"``, the default) is hierarchical,
the binary model's rule and then one more threshold:

1. PNEUMONIA when P(pneumonia) = 1 - P(first class) reaches ``threshold_``,
   chosen by ``threshold_rule`` on the out-of-fold probabilities (NORMAL vs
   the rest), as `pipelines.decision.DecisionClassifier` chooses its threshold
   (same rules, same default);
2. among those, the last class (VIRAL) when P(last | not first) =
   P(last) / (1 - P(first)) reaches ``subtype_threshold_``, chosen by Youden's J
   (sensitivity and specificity weighed alike) on the out-of-fold
   probabilities of the training images of the other classes (BACTERIAL vs
   VIRAL), else the middle class.

``decision="argmax"`` takes the most probable class instead. With more than
three classes, step 2 is the argmax among the classes after the first.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .assemble import make_head
from .decision import _check_augment, cross_fit
from .metrics import DEFAULT_THRESHOLD_RULE, choose_threshold

__all__ = ["MultiClassDecision", "TemperatureScaler", "make_multiclass_head", "decide",
           "pneumonia_proba", "subtype_proba", "is_multiclass", "three_class_refusal", "DECISIONS"]

DECISIONS = ("thresholds", "argmax")
_EPS = 1e-7


def make_multiclass_head(name, random_state=0, n_jobs=None):
    """`pipelines.assemble.make_head`'s head, multi-class.

    ``"logreg"``: the same scaling and L2 logistic regression (same ``C``); its
    lbfgs solver fits a multinomial model when there are more than two
    classes. ``"xgb"``: the same trees; `xgboost.XGBClassifier` fits them with
    ``objective="multi:softprob"`` (one set of trees per class, softmax) when
    it finds more than two classes, and with the binary objective on two. The
    binary head's ``eval_metric="logloss"`` is unset: it is binary-only, and
    no evaluation set is used.
    """
    head = make_head(name, random_state, n_jobs)
    if name == "xgb":
        head.set_params(eval_metric=None)
    return head


class TemperatureScaler(BaseEstimator):
    """Temperature scaling of class probabilities: p -> softmax(log(p) / T).

    One parameter, fitted by maximum likelihood; it keeps every image's order of
    classes and the ranking of every one-vs-rest score, and only sharpens or
    softens the probabilities.

    Attributes
    ----------
    temperature_ : float
    """

    def fit(self, proba, y):
        """Fit ``T`` on probabilities ``proba`` (n, k) and class indices ``y``."""
        logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1))
        y = np.asarray(y)

        def nll(log_t):
            return -log_softmax(logp / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean()

        self.temperature_ = float(np.exp(minimize_scalar(nll, bounds=(-3, 3),
                                                         method="bounded").x))
        return self

    def transform(self, proba):
        """``proba`` (n, n_classes) with every log-probability divided by ``temperature_``."""
        check_is_fitted(self, "temperature_")
        logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1))
        return softmax(logp / self.temperature_, axis=1)


def pneumonia_proba(proba):
    """P(not the first class): P(PNEUMONIA) of NORMAL / BACTERIAL / VIRAL probabilities."""
    return 1 - np.asarray(proba)[:, 0]


def subtype_proba(proba):
    """P(last class | not the first): P(VIRAL | PNEUMONIA)."""
    proba = np.asarray(proba)
    return proba[:, -1] / np.clip(1 - proba[:, 0], _EPS, None)


def decide(proba, threshold, subtype_threshold, rule="thresholds"):
    """Class indices from probabilities ``proba`` (n, k) by ``rule`` (see the module docstring)."""
    proba = np.asarray(proba)
    if rule == "argmax":
        return proba.argmax(axis=1)
    if rule != "thresholds":
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {rule!r}")
    rest = 1 + proba[:, 1:].argmax(axis=1)
    if proba.shape[1] == 3:
        rest = np.where(subtype_proba(proba) >= subtype_threshold, 2, 1)
    return np.where(pneumonia_proba(proba) >= threshold, rest, 0)


def _fit_thresholds(proba, y, rule, threshold_rule):
    """``(threshold, subtype_threshold)`` of `decide` from out-of-fold ``proba``
    and class indices ``y``; ``threshold_rule`` chooses the first."""
    if rule == "argmax":
        return float("nan"), float("nan")
    # P(pneumonia) = 1 - P(normal) can round to exactly 1.0; a threshold of 1.0
    # would make a saved model unloadable (persist.check_decision_numbers), and the
    # largest double below 1 takes the same decisions
    threshold = min(choose_threshold(y != 0, pneumonia_proba(proba), threshold_rule),
                    float(np.nextafter(1.0, 0.0)))
    subtype_threshold = float("nan")
    if proba.shape[1] == 3 and (y == 1).any() and (y == 2).any():
        rest = y != 0
        subtype_threshold = choose_threshold(y[rest] == 2, subtype_proba(proba[rest]), "youden")
    return threshold, subtype_threshold


class MultiClassDecision(ClassifierMixin, BaseEstimator):
    """Fit a multi-class ``estimator``, a calibration and a decision rule, without leakage.

    `fit` gets out-of-fold probabilities over ``cv`` (patient-grouped folds
    stratified on the classes, as ``(train, test)`` index pairs, or an int),
    fits the calibration on them, then the thresholds of the decision rule on
    the calibrated out-of-fold probabilities, and refits ``estimator`` on all
    the data.

    Parameters
    ----------
    estimator : classifier with predict_proba
        Fitted on class indices 0 .. k-1 (see `make_multiclass_head`).
    cv : int or list of (train, test) index arrays
    classes : sequence or None
        The class labels in order (e.g. ``("NORMAL", "BACTERIAL", "VIRAL")``):
        the order of `predict_proba`'s columns, and the first is the negative
        class of the decision rule. None: the sorted labels of ``y``.
    calibration : {"temperature", None}
        Temperature scaling of the out-of-fold probabilities, or none.
    decision : {"thresholds", "argmax"}
        How probabilities become a class (see the module docstring).
    threshold_rule : str, default=DEFAULT_THRESHOLD_RULE
        How ``threshold_`` is chosen (`pipelines.metrics.choose_threshold`):
        ``"sensitivity:0.95"``, ``"youden"`` or a number.
    n_jobs : int or None
        Threads for the fold fits and the final fit (BLAS held to one thread
        each meanwhile); None or 1: one at a time.

    Attributes
    ----------
    classes_ : ndarray of the class labels
    estimator_ : the head refitted on all the data
    raw_oof_proba_ : ndarray (n, k), out-of-fold probabilities before calibration
    oof_proba_ : ndarray (n, k), calibrated out-of-fold probabilities
    oof_fold_ : ndarray (n,), the fold of each training sample
    calibrator_ : TemperatureScaler or None
    threshold_ : float
        On P(not the first class); NaN under ``decision="argmax"``.
    subtype_threshold_ : float
        On P(last class | not the first); NaN under argmax or without three classes.
    n_features_in_ : int
    """

    def __init__(self, estimator, cv=5, classes=None, calibration="temperature",
                 decision="thresholds", threshold_rule=DEFAULT_THRESHOLD_RULE, n_jobs=None):
        self.estimator = estimator
        self.cv = cv
        self.classes = classes
        self.calibration = calibration
        self.decision = decision
        self.threshold_rule = threshold_rule
        self.n_jobs = n_jobs

    def fit(self, X, y, X_aug=None, y_aug=None, aug_source=None):
        """Fit on ``X, y``; augmented rows ``X_aug, y_aug`` (optional) join the
        training part of every fold that holds their source row ``aug_source``
        (an index into ``X``), never a test part."""
        if self.calibration not in ("temperature", None):
            raise ValueError(f"calibration must be 'temperature' or None, "
                             f"got {self.calibration!r}")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, "
                             f"got {self.decision!r}")
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y) if self.classes is None else np.asarray(self.classes)
        codes = self._encode(y)
        if len(self.classes_) < 2:
            raise ValueError(f"need samples of at least 2 classes, got {len(self.classes_)} class")
        augment = _check_augment(len(y), X_aug, y_aug, aug_source)
        if augment is not None:
            augment = (augment[0], self._encode(augment[1]), augment[2])
        k = len(self.classes_)
        raw, fold, self.estimator_ = cross_fit(
            self.estimator, [X], codes, self.cv, augment, self.n_jobs,
            score=lambda model, views: _class_proba(model, views[0], k))
        self.raw_oof_proba_, self.oof_fold_ = raw, fold
        self.calibrator_ = (None if self.calibration is None
                            else TemperatureScaler().fit(raw, codes))
        self.oof_proba_ = self._calibrate(raw)
        self.threshold_, self.subtype_threshold_ = _fit_thresholds(
            self.oof_proba_, codes, self.decision, self.threshold_rule)
        return self

    def _encode(self, y):
        y = np.asarray(y)
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        unknown = sorted({str(v) for v in y.tolist() if v not in index})
        if unknown:
            raise ValueError(f"labels {unknown} are not in classes {self.classes_.tolist()}")
        return np.array([index[v] for v in y.tolist()], dtype=np.int64)

    def _calibrate(self, raw):
        return raw if self.calibrator_ is None else self.calibrator_.transform(raw)

    def predict_proba(self, X):
        """Calibrated probabilities, one column per class of ``classes_``."""
        check_is_fitted(self, "estimator_")
        X = validate_data(self, X, reset=False)
        return self._calibrate(_class_proba(self.estimator_, X, len(self.classes_)))

    def predict(self, X):
        """The class of each row by the decision rule."""
        codes = decide(self.predict_proba(X), self.threshold_, self.subtype_threshold_,
                       self.decision)
        return self.classes_[codes]


def _class_proba(model, X, k):
    """``model``'s probabilities as k columns (a class missing from its training part: 0)."""
    proba = model.predict_proba(X)
    out = np.zeros((len(proba), k))
    out[:, np.asarray(model.classes_, dtype=int)] = proba
    return out


def is_multiclass(model):
    """Whether a saved pipeline (or its last step) decides between more than two classes."""
    last = model.steps[-1][1] if hasattr(model, "steps") else model
    return len(getattr(last, "classes_", ())) > 2


def three_class_refusal(tool):
    """The one-line reason ``tool`` gives for refusing a multi-class model."""
    return (f"this is a three-class model (NORMAL/BACTERIAL/VIRAL, pipelines.run --task "
            f"subtype); {tool} handles binary NORMAL/PNEUMONIA models only")
