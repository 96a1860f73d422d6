"""The last step: a head whose probability is calibrated and thresholded
from out-of-fold training predictions only."""

from __future__ import annotations

import copy

import numpy as np
from joblib import Parallel, delayed
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import check_cv
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from .metrics import DEFAULT_THRESHOLD_RULE, choose_threshold

__all__ = ["DecisionClassifier", "PlattCalibrator", "ScoreHead", "cross_fit", "logit",
           "mean_logit", "prior_shift", "prior_corrected"]

_EPS = 1e-6


def logit(p, eps=_EPS):
    """log(p / (1 - p)), with p clipped to [eps, 1 - eps] (default 1e-6)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def prior_shift(from_prevalence, to_prevalence):
    """The logit shift that moves calibrated probabilities from one prior to another."""
    return float(logit(to_prevalence) - logit(from_prevalence))


def prior_corrected(proba, from_prevalence, to_prevalence):
    """Calibrated probabilities ``proba`` (fitted at ``from_prevalence``)
    prior-corrected to ``to_prevalence``; their order is kept."""
    return expit(logit(proba) + prior_shift(from_prevalence, to_prevalence))


class PlattCalibrator(BaseEstimator):
    """Platt scaling on the logit of a probability: p -> sigmoid(a logit(p) + b).

    ``prevalence_`` is the share of positives it was fitted on (its calibrated
    probabilities average to it); `with_prevalence` moves it to another prior.
    """

    def fit(self, proba, y):
        """Fit the two Platt coefficients on probabilities ``proba`` and labels ``y``."""
        self.model_ = LogisticRegression(C=1e6).fit(logit(proba)[:, None], y)
        self.prevalence_ = float(np.mean(y))
        return self

    def with_prevalence(self, prevalence, fitted_prevalence=None):
        """A copy calibrated for a population with ``prevalence`` positives
        (prior correction: every output logit moves by
        logit(prevalence) - logit(fitted prevalence)); the order of scores is kept.
        ``fitted_prevalence`` stands in for ``prevalence_`` on calibrators
        pickled before it was recorded."""
        check_is_fitted(self, "model_")
        fitted = getattr(self, "prevalence_", fitted_prevalence)
        if fitted is None:
            raise ValueError("this calibrator does not record the prevalence it was fitted on")
        for name, value in (("prevalence", prevalence), ("fitted prevalence", fitted)):
            if not 0 < value < 1:
                raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
        new = copy.deepcopy(self)
        new.model_.intercept_ = self.model_.intercept_ + prior_shift(fitted, prevalence)
        new.prevalence_ = float(prevalence)
        return new

    def transform(self, proba):
        """Calibrated probabilities of ``proba``."""
        return self.model_.predict_proba(logit(proba)[:, None])[:, 1]


class ScoreHead(ClassifierMixin, BaseEstimator):
    """A head that learns nothing: its one input column already is P(pneumonia).

    The head of a pure-CNN pipeline (``OnnxCNNScore -> DecisionClassifier(
    ScoreHead())``): the network was trained elsewhere, so `DecisionClassifier`
    takes its out-of-fold probabilities as given (``cv="given"``) and only
    calibration and threshold are fitted here.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        ``[0, 1]``.
    n_features_in_ : int
        Always 1.

    Examples
    --------
    >>> import numpy as np
    >>> ScoreHead().fit(np.array([[0.2], [0.9]]), [0, 1]).predict_proba([[0.25]])
    array([[0.75, 0.25]])
    """

    def fit(self, X, y=None):
        """Check that ``X`` is one column of probabilities; nothing is learnt."""
        X = self._check(X, reset=True)
        if y is not None:
            y = np.asarray(y)
            if len(y) != len(X):
                raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
            if not np.isin(np.unique(y), [0, 1]).all():
                raise ValueError("labels must be 0 (normal) or 1 (pneumonia)")
        self.classes_ = np.array([0, 1])
        return self

    def _check(self, X, reset=False):
        X = validate_data(self, X, reset=reset, dtype=np.float64)
        if X.shape[1] != 1:
            raise ValueError(f"ScoreHead takes one column, P(pneumonia); got {X.shape[1]}")
        return X

    def predict_proba(self, X):
        """(n, 2): 1 - p and p, with p the input column clipped to [0, 1]."""
        check_is_fitted(self, "classes_")
        p = np.clip(self._check(X)[:, 0], 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        """1 where P(pneumonia) >= 0.5."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


class DecisionClassifier(ClassifierMixin, BaseEstimator):
    """Fit ``estimator``, a calibration and a threshold, all without leakage.

    `fit` first gets out-of-fold probabilities over ``cv`` (patient-grouped
    folds, given as a list of ``(train, test)`` index pairs, or an int), fits
    the calibration on them, and picks the threshold on the calibrated
    out-of-fold probabilities by ``threshold_rule``; then it refits
    ``estimator`` on all the data. `predict` uses that threshold.

    Three jobs in turn, each its own piece: `cross_fit` (the folds, the
    training copies that join training folds only, and the test-time views),
    `PlattCalibrator` (calibration), `pipelines.metrics.choose_threshold`
    (the threshold). ``cv="given"`` skips the first.

    Parameters
    ----------
    estimator : classifier with predict_proba
    cv : int, list of (train, test) index arrays, or "given"
        ``"given"``: the out-of-fold probabilities come from elsewhere (a
        CNN cross-fitted on a GPU) and are passed to `fit` as ``oof_proba``
        with their ``oof_fold``; ``estimator`` is then only fitted on all
        the data (for a `ScoreHead`, it learns nothing).
    calibration : {"sigmoid", None}
        Platt scaling of the out-of-fold probabilities, or none.
    threshold_rule : str, default=DEFAULT_THRESHOLD_RULE
        ``"sensitivity:0.95"`` (the highest threshold reaching that
        out-of-fold sensitivity; the default), ``"youden"`` (max sensitivity
        + specificity - 1) or a number such as ``"0.5"``.
    n_jobs : int or None
        Threads for the fold fits and the final fit, which are independent
        (BLAS is held to one thread each meanwhile); None or 1: one at a time.
    n_views : int
        Test-time augmentation: each row of ``X`` holds ``n_views`` equal
        blocks of columns, the features of views of one image (the image
        itself first). ``estimator`` trains on the first block (``X_aug`` is
        one block wide); a score is the mean logit of its probabilities over
        the blocks, out of fold too, so calibration and threshold are fitted
        on the scores that `predict` gives.

    Attributes
    ----------
    estimator_ : the refitted head
    oof_proba_ : calibrated out-of-fold probabilities, in training order
    oof_fold_ : the fold of each training sample
    calibrator_ : PlattCalibrator or None
    threshold_ : float
    """

    def __init__(self, estimator, cv=5, calibration="sigmoid",
                 threshold_rule=DEFAULT_THRESHOLD_RULE,
                 n_jobs=None, n_views=1):
        self.estimator = estimator
        self.cv = cv
        self.calibration = calibration
        self.threshold_rule = threshold_rule
        self.n_jobs = n_jobs
        self.n_views = n_views

    def fit(self, X, y, X_aug=None, y_aug=None, aug_source=None, oof_proba=None,
            oof_fold=None):
        """Fit on ``X, y``; augmented rows ``X_aug, y_aug`` (optional) join the
        training part of every fold that holds their source row
        ``aug_source`` (an index into ``X``), and never a test part.

        With ``cv="given"``, ``oof_proba`` (the uncalibrated out-of-fold
        P(pneumonia) of each row of ``X``) and optionally ``oof_fold`` (the
        fold of each) replace the cross-fitting."""
        y = np.asarray(y)
        self.classes_ = np.array([0, 1])
        if isinstance(self.cv, str) and self.cv == "given":
            return self._fit_given(X, y, oof_proba, oof_fold)
        if oof_proba is not None:
            raise ValueError('oof_proba is only used with cv="given"')
        augment = _check_augment(len(y), X_aug, y_aug, aug_source)
        raw, fold, self.estimator_ = cross_fit(self.estimator, self._views(X), y, self.cv,
                                               augment, self.n_jobs)
        return self._decide(raw, fold, y)

    def _fit_given(self, X, y, oof_proba, oof_fold):
        if oof_proba is None:
            raise ValueError('cv="given" needs the out-of-fold probabilities: fit(..., oof_proba=)')
        raw = np.asarray(oof_proba, dtype=np.float64)
        if raw.shape != y.shape or not np.isfinite(raw).all() or raw.min() < 0 or raw.max() > 1:
            raise ValueError(f"oof_proba must hold one finite probability in [0, 1] per label "
                             f"({len(y)}); got shape {raw.shape}")
        fold = np.full(len(y), -1) if oof_fold is None else np.asarray(oof_fold)
        if fold.shape != y.shape:
            raise ValueError(f"oof_fold has shape {fold.shape}, expected {y.shape}")
        self.estimator_ = clone(self.estimator).fit(X, y)
        return self._decide(raw, fold, y)

    def _decide(self, raw, fold, y):
        """Calibration on the out-of-fold scores ``raw``, then the threshold on
        the calibrated ones: the two jobs after the cross-fitting."""
        self.raw_oof_proba_ = raw
        self.oof_fold_ = fold
        self.calibrator_ = self._fit_calibrator(raw, y)
        self.oof_proba_ = self._calibrate(raw)
        self.threshold_ = choose_threshold(y, self.oof_proba_, self.threshold_rule)
        return self

    def rethreshold(self, y, threshold_rule):
        """Choose the threshold again by ``threshold_rule`` from the stored
        out-of-fold probabilities (``y``: the training labels), without refitting."""
        check_is_fitted(self, "oof_proba_")
        if len(y) != len(self.oof_proba_):
            raise ValueError(f"y has {len(y)} labels for {len(self.oof_proba_)} "
                             "out-of-fold probabilities")
        self.threshold_rule = threshold_rule
        self.threshold_ = choose_threshold(np.asarray(y), self.oof_proba_, threshold_rule)
        return self

    def _fit_calibrator(self, raw, y):
        if self.calibration is None:
            return None
        if self.calibration != "sigmoid":
            raise ValueError(f"calibration must be 'sigmoid' or None, got {self.calibration!r}")
        return PlattCalibrator().fit(raw, y)

    def _calibrate(self, raw):
        return raw if self.calibrator_ is None else self.calibrator_.transform(raw)

    def __setstate__(self, state):
        state.setdefault("n_views", 1)  # pickled before test-time views existed
        super().__setstate__(state)

    def _views(self, X):
        """``X`` split into its ``n_views`` blocks of columns."""
        if self.n_views == 1:
            return [X]
        X = np.asarray(X)
        if self.n_views < 1 or X.shape[1] % self.n_views:
            raise ValueError(f"X has {X.shape[1]} columns, not n_views={self.n_views} equal blocks")
        return np.split(X, self.n_views, axis=1)

    def raw_score(self, X):
        """The refitted head's probability, averaged over the views (uncalibrated)."""
        check_is_fitted(self, "estimator_")
        return _mean_view_score(self.estimator_, self._views(X))

    def predict_proba(self, X):
        """(n, 2): calibrated P(normal), P(pneumonia) of the feature rows ``X``."""
        p = self._calibrate(self.raw_score(X))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        """1 (pneumonia) where the calibrated probability reaches ``threshold_``."""
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)


def cross_fit(estimator, views, y, cv, augment=None, n_jobs=None, score=None):
    """Out-of-fold scores of a copy of ``estimator`` per fold, and one fitted on all rows.

    Parameters
    ----------
    estimator : classifier with predict_proba
    views : list of arrays
        The feature rows of each test-time view (one array: no views); every
        model trains on the first view only.
    y : array of shape (n_samples,)
    cv : int or list of (train, test) index arrays
        Every row must be a test row exactly once.
    augment : tuple (X_aug, y_aug, source), optional
        Training copies: each joins the training part of every fit whose
        training rows hold its ``source`` row, and is never scored.
    n_jobs : int, optional
        Threads for the fold fits and the final fit (BLAS held to one each).
    score : callable, optional
        ``score(model, views_of_test_rows)`` -> each row's score(s); default:
        P(positive), the `mean_logit` over the views.

    Returns
    -------
    raw : ndarray of shape (n_samples,) or (n_samples, n_scores)
        Each row's out-of-fold score.
    fold : ndarray of shape (n_samples,)
        The fold that scored each row.
    final : classifier
        The copy fitted on every row (and every copy).
    """
    splits = list(check_cv(cv, y, classifier=True).split(views[0], y))
    jobs = [(train, test) for train, test in splits] + [(np.arange(len(y)), None)]
    with threadpool_limits(1 if (n_jobs or 1) != 1 else None):
        fitted = Parallel(n_jobs=n_jobs, backend="threading")(
            delayed(_fit_one)(estimator, views[0], y, train, augment) for train, _ in jobs)
    score = score or _mean_view_score
    raw, fold = None, np.full(len(y), -1)
    for k, (model, (_, test)) in enumerate(zip(fitted[:-1], jobs[:-1])):
        part = np.asarray(score(model, [_take(V, test) for V in views]), dtype=np.float64)
        if raw is None:
            raw = np.full((len(y),) + part.shape[1:], np.nan)
        raw[test] = part
        fold[test] = k
    if raw is None or np.isnan(raw).any():
        raise ValueError("cv must cover every sample exactly once as a test sample")
    return raw, fold, fitted[-1]


def mean_logit(probas):
    """Several probability arrays as one: the sigmoid of their mean logit."""
    return expit(np.mean([logit(p) for p in probas], axis=0))


def _mean_view_score(model, views):
    """``model``'s probability of each row; over several views, their `mean_logit`."""
    scores = [model.predict_proba(V)[:, 1] for V in views]
    return scores[0] if len(scores) == 1 else mean_logit(scores)


def _fit_one(estimator, X, y, index, augment):
    X_part, y_part = _take(X, index), y[index]
    if augment is not None:
        X_aug, y_aug, source = augment
        rows = np.flatnonzero(np.isin(source, index))
        X_part = np.vstack([X_part, X_aug[rows]])
        y_part = np.concatenate([y_part, y_aug[rows]])
    return clone(estimator).fit(X_part, y_part)


def _check_augment(n_samples, X_aug, y_aug, aug_source):
    given = [a is not None for a in (X_aug, y_aug, aug_source)]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("X_aug, y_aug and aug_source go together")
    X_aug, y_aug, source = np.asarray(X_aug), np.asarray(y_aug), np.asarray(aug_source)
    if not len(X_aug) == len(y_aug) == len(source):
        raise ValueError("X_aug, y_aug and aug_source must have the same length")
    if len(source) and (source.min() < 0 or source.max() >= n_samples):
        raise ValueError("aug_source must index rows of X")
    return X_aug, y_aug, source


def _take(X, index):
    return X[index] if hasattr(X, "shape") else [X[i] for i in index]
