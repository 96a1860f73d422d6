"""`python -m pipelines.calibrate`: site recalibration writes a new, verifiable model."""

import numpy as np

from pipelines import calibrate
from pipelines.persist import load_model, sha256_of
from xray_features.dataset import index_dataset


def test_recalibration_writes_new_model_and_keeps_original(trained_run, synthetic_data, tmp_path):
    source = trained_run / "models" / "hog-logreg.joblib"
    digest = sha256_of(source)
    out = tmp_path / "site.joblib"
    assert calibrate.main(["--model", str(source), "--labelled-dir",
                           str(synthetic_data / "test"), "--out", str(out)]) == 0
    assert sha256_of(source) == digest  # the original is untouched
    old, _ = load_model(source)
    new, metadata = load_model(out)
    assert metadata["site_calibration"]["n"] == 12
    assert metadata["threshold"] == new.steps[-1][1].threshold_
    paths = list(index_dataset(synthetic_data / "test").paths)
    p_old, p_new = old.predict_proba(paths)[:, 1], new.predict_proba(paths)[:, 1]
    # the head is kept, so the ranking is the same; only calibration and threshold move
    np.testing.assert_array_equal(np.argsort(p_old, kind="stable"), np.argsort(p_new, kind="stable"))


def test_recalibration_moves_threshold_to_the_site():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from pipelines.decision import DecisionClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    model = Pipeline([("classifier", DecisionClassifier(LogisticRegression(), cv=3).fit(X, y))])
    raw = model.steps[-1][1].estimator_.predict_proba(X)[:, 1]
    shifted = np.clip(raw + 0.3, 0, 1)  # the site's images all look "more pneumonia"
    new = calibrate.recalibrate(model, shifted, y).steps[-1][1]
    accuracy = np.mean((new.calibrator_.transform(shifted) >= new.threshold_) == y)
    old = model.steps[-1][1]
    stale = np.mean((old.calibrator_.transform(shifted) >= old.threshold_) == y)
    assert accuracy > 0.95 and accuracy > stale


def test_refuses_to_overwrite(trained_run, synthetic_data, capsys):
    source = trained_run / "models" / "hog-logreg.joblib"
    assert calibrate.main(["--model", str(source), "--labelled-dir",
                           str(synthetic_data / "test"), "--out", str(source)]) == 2
    assert "never overwritten" in capsys.readouterr().err
