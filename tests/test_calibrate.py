"""`python -m pipelines.calibrate`: site recalibration writes a new, verifiable model."""

import numpy as np
import pytest

from pipelines import calibrate
from pipelines.persist import load_model, sha256_of
from xray_features.dataset import index_dataset


def test_recalibration_writes_new_model_and_keeps_original(trained_run, synthetic_data, tmp_path,
                                                             capsys):
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
    from pipelines import score

    capsys.readouterr()
    assert score.main(["--model", str(out), str(synthetic_data / "test"), "--quiet",
                       "--out", str(tmp_path / "scores.csv")]) == 0
    assert "recalibrated on 12 site images" in capsys.readouterr().err


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


def _platt_scores(n_normal, n_pneumonia, rng):
    """Head scores with fixed class-conditional distributions (only the mix varies)."""
    logits = np.concatenate([rng.normal(-1.5, 1.0, n_normal), rng.normal(1.5, 1.0, n_pneumonia)])
    return 1 / (1 + np.exp(-logits)), np.r_[np.zeros(n_normal, int), np.ones(n_pneumonia, int)]


def test_prior_correction_matches_a_site_with_another_prevalence():
    from pipelines.decision import PlattCalibrator

    rng = np.random.default_rng(0)
    scores, y = _platt_scores(2500, 7500, rng)  # trained at prevalence 0.75
    calibrator = PlattCalibrator().fit(scores, y)
    assert calibrator.prevalence_ == 0.75
    assert np.mean(calibrator.transform(scores)) == pytest.approx(0.75, abs=1e-3)
    site_scores, site_y = _platt_scores(7000, 3000, rng)  # the same classes, prevalence 0.3
    stale = calibrator.transform(site_scores)
    corrected = calibrator.with_prevalence(0.3).transform(site_scores)
    assert abs(np.mean(corrected) - 0.3) < 0.02 < abs(np.mean(stale) - 0.3)
    assert np.mean((corrected - site_y) ** 2) < np.mean((stale - site_y) ** 2)  # Brier
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    shift = np.log(0.3 / 0.7) - np.log(0.75 / 0.25)
    np.testing.assert_allclose(logit(corrected) - logit(stale), shift, rtol=1e-6)
    assert calibrator.prevalence_ == 0.75  # the original is unchanged
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        calibrator.with_prevalence(1.0)


def test_prevalence_mode_writes_a_model_with_the_same_decisions(trained_run, synthetic_data,
                                                                 tmp_path, capsys):
    source = trained_run / "models" / "hog-logreg.joblib"
    digest = sha256_of(source)
    out = tmp_path / "prevalence.joblib"
    assert calibrate.main(["--model", str(source), "--prevalence", "0.2", "--out", str(out)]) == 0
    assert sha256_of(source) == digest
    old, _ = load_model(source)
    new, metadata = load_model(out)
    correction = metadata["prior_correction"]
    assert correction["prevalence"] == 0.2 and correction["from_prevalence"] == 0.5  # 15 + 15
    assert metadata["threshold"] == new.steps[-1][1].threshold_ < old.steps[-1][1].threshold_
    paths = list(index_dataset(synthetic_data / "test").paths)
    np.testing.assert_array_equal(new.predict(paths), old.predict(paths))
    assert np.all(new.predict_proba(paths)[:, 1] <= old.predict_proba(paths)[:, 1])
    from pipelines import score

    capsys.readouterr()
    assert score.main(["--model", str(out), str(synthetic_data / "test"), "--quiet",
                       "--out", str(tmp_path / "scores.csv")]) == 0
    assert "probabilities for a prevalence of 0.200" in capsys.readouterr().err


def test_prevalence_of_models_pickled_before_it_was_recorded(trained_run):
    import copy

    model, _ = load_model(trained_run / "models" / "hog-logreg.joblib")
    legacy = copy.deepcopy(model)
    del legacy.steps[-1][1].calibrator_.prevalence_
    _, fitted = calibrate.adjust_prevalence(legacy, 0.2)
    assert fitted == pytest.approx(0.5, abs=0.01)  # the calibrated out-of-fold mean
    with pytest.raises(ValueError, match="recalibrate it again"):
        calibrate.adjust_prevalence(legacy, 0.2, {"site_calibration": {"n": 12}})


def test_prevalence_and_labelled_dir_exclude_each_other(trained_run, synthetic_data, tmp_path,
                                                        capsys):
    source = str(trained_run / "models" / "hog-logreg.joblib")
    with pytest.raises(SystemExit):
        calibrate.main(["--model", source, "--prevalence", "0.2", "--labelled-dir",
                        str(synthetic_data / "test"), "--out", str(tmp_path / "x.joblib")])
    assert "not allowed with" in capsys.readouterr().err
    assert calibrate.main(["--model", source, "--prevalence", "1.5",
                           "--out", str(tmp_path / "y.joblib")]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "y.joblib").exists()


def test_unlabelled_films_set_the_threshold_to_the_stated_share(trained_run, synthetic_data,
                                                                 tmp_path, capsys):
    import shutil

    source = trained_run / "models" / "hog-logreg.joblib"
    films = tmp_path / "films"
    shutil.copytree(synthetic_data / "train", films)  # 30 films, labels ignored
    (films / "PNEUMONIA" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "quantile.joblib"
    assert calibrate.main(["--model", str(source), "--prevalence", "0.2", "--unlabelled-dir",
                           str(films), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "of the 30 unlabelled films" in err
    new, metadata = load_model(out)
    assert metadata["prior_correction"]["unlabelled"] == {"dir": str(films), "n": 30,
                                                          "n_skipped": 1}
    paths = [p for p in index_dataset(films).paths if not p.endswith("broken.png")]
    assert new.predict(paths).sum() == 6  # 0.2 of 30, scores untied
    corrected, _ = calibrate.adjust_prevalence(load_model(source)[0], 0.2)
    np.testing.assert_allclose(new.predict_proba(paths), corrected.predict_proba(paths))
    from pipelines import score

    assert score.main(["--model", str(out), str(films / "NORMAL"), "--quiet",
                       "--out", str(tmp_path / "scores.csv")]) == 0
    assert "threshold from 30 unlabelled site films" in capsys.readouterr().err


def test_unlabelled_dir_needs_a_prevalence_and_enough_films(trained_run, synthetic_data,
                                                            tmp_path, capsys):
    source = str(trained_run / "models" / "hog-logreg.joblib")
    with pytest.raises(SystemExit):
        calibrate.main(["--model", source, "--labelled-dir", str(synthetic_data / "test"),
                        "--unlabelled-dir", str(synthetic_data / "test"),
                        "--out", str(tmp_path / "x.joblib")])
    assert "--unlabelled-dir needs --prevalence" in capsys.readouterr().err
    for folder, message in ((synthetic_data / "test", "at least 20"),  # 12 films
                            (tmp_path / "missing", "unlabelled folder not found")):
        assert calibrate.main(["--model", source, "--prevalence", "0.5", "--unlabelled-dir",
                               str(folder), "--out", str(tmp_path / "y.joblib")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "y.joblib").exists()
