"""`python -m pipelines.run`, end to end on a small synthetic set."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pipelines import run
from pipelines.decision import DecisionClassifier
from pipelines.metrics import auc
from pipelines.persist import load_model
from pipelines.selection import SELECTION_MARGIN, select_model
from xray_features.dataset import index_dataset


def test_metrics_json_contract(trained_run):
    results = json.loads((trained_run / "metrics.json").read_text())
    expected = {"hog/logreg", "hog/xgb", "hog+lbp/logreg", "hog+lbp/xgb", "baseline/cnn-probe"}
    assert expected <= set(results["models"])
    for name, model in results["models"].items():
        for part in ("cv", "eval"):
            for key in ("auc", "accuracy", "sensitivity", "specificity", "threshold", "n"):
                assert key in model[part], (name, part, key)
        assert model["cv"]["n"] == 30 and model["eval"]["n"] == 12
        assert model["cv"]["ci"]["auc"][0] <= model["cv"]["auc"] <= model["cv"]["ci"]["auc"][1]
    assert results["selected"] in results["models"]
    assert not results["selected"].startswith("baseline/")
    assert results["augment"] == "counter-squash+zoom"  # the default
    against = results["selected_vs_baselines"]["baseline/cnn-probe"]
    assert against["cv"]["diff"] == pytest.approx(
        results["models"][results["selected"]]["cv"]["auc"]
        - results["models"]["baseline/cnn-probe"]["cv"]["auc"])
    assert "eval" in against
    # the synthetic signal is easy: the texture models must learn it
    assert results["models"]["hog/logreg"]["cv"]["auc"] > 0.9
    for name in ("roc_cv.png", "roc_eval.png", "confusion_cv.png", "calibration_eval.png",
                 "report.md", "report.html"):
        assert (trained_run / name).stat().st_size > 0
    html = (trained_run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Per fold" in html
    assert "augmentation counter-squash+zoom" in html
    assert "augmentation counter-squash+zoom" in (trained_run / "report.md").read_text()


def test_saved_model_reproduces_eval_scores(trained_run, synthetic_data):
    results = json.loads((trained_run / "metrics.json").read_text())
    model, metadata = load_model(trained_run / "models" / "hog-logreg.joblib")
    assert metadata["feature_set"] == "hog" and metadata["head"] == "logreg"
    assert metadata["threshold"] == model.steps[-1][1].threshold_
    assert len(metadata["training_manifest_sha256"]) == 64
    test = index_dataset(synthetic_data / "test")
    proba = model.predict_proba(list(test.paths))[:, 1]
    predicted = model.predict(list(test.paths))
    np.testing.assert_array_equal(predicted, (proba >= metadata["threshold"]).astype(int))
    expected_accuracy = results["models"]["hog/logreg"]["eval"]["accuracy"]
    assert np.mean(predicted == test.labels) == pytest.approx(expected_accuracy)


def test_same_seed_gives_identical_cv_numbers(synthetic_data, tmp_path):
    outs = []
    for name in ("a", "b"):
        run.main(["--data", str(synthetic_data), "--features", "hog", "--heads", "xgb",
                  "--cv", "3", "--n-boot", "30", "--quiet", "--no-save",
                  "--out", str(tmp_path / name), "--cache-dir", "none"])
        outs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    a, b = (o["models"]["hog/xgb"]["cv"] for o in outs)
    assert a == b


def test_limit_subsamples_by_patient(synthetic_data):
    index = run.load_training_index(synthetic_data, limit=10, seed=0)
    assert 6 <= len(index) <= 15
    assert set(index.labels) == {0, 1}


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert run.main(["--data", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "training data not found" in capsys.readouterr().err


def test_unknown_feature_is_a_clear_error(capsys):
    assert run.main(["--features", "hog+sift", "--quiet"]) == 2
    assert "sift" in capsys.readouterr().err


def test_help_explains_options():
    text = subprocess.run([sys.executable, "-m", "pipelines.run", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for option in ("--features", "--heads", "--data", "--eval-dir", "--cv", "--seed", "--out",
                   "--n-jobs", "--limit"):
        assert option in text


def test_selection_takes_the_simplest_model_non_inferior_to_the_best():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    groups = np.arange(400)
    signal = y + rng.normal(0, 0.5, 400)
    oof = {"hog+lbp+cnn/logreg": signal,
           "hog+cnn/logreg": signal + rng.normal(0, 0.01, 400),  # the same ranking, nearly
           "hog/logreg": y + rng.normal(0, 1.5, 400)}              # clearly worse
    models = {n: {"features": n.split("/")[0], "cv": {"auc": auc(y, p)}} for n, p in oof.items()}
    models["baseline/cnn-probe"] = {"features": "cnn", "cv": {"auc": 1.0}}
    chosen, tests = select_model(models, oof, y, groups, n_boot=300)
    assert chosen == "hog+cnn/logreg"
    assert tests["hog/logreg"]["ci"][0] > SELECTION_MARGIN  # clearly worse: not eligible
    oof["hog+cnn/logreg"] = y + rng.normal(0, 1.5, 400)
    models["hog+cnn/logreg"]["cv"]["auc"] = auc(y, oof["hog+cnn/logreg"])
    assert select_model(models, oof, y, groups, n_boot=300)[0] == "hog+lbp+cnn/logreg"


def test_selection_tolerates_a_significant_but_tiny_loss():
    """Non-inferiority, not significance: a simpler model that loses a little CV
    AUC (significantly, but under the margin) is selected with a 0.002 margin,
    not with a zero margin."""
    y = np.repeat([0, 1], 2000)
    groups = np.arange(4000)
    best = y + np.random.default_rng(1).normal(0, 0.35, 4000)
    blurred = best + np.random.default_rng(2).normal(0, 0.05, 4000)  # ranks a little worse
    oof = {"hog+lbp+cnn/logreg": best, "hog+cnn/logreg": blurred}
    models = {"hog+lbp+cnn/logreg": {"features": "hog+lbp+cnn", "cv": {"auc": auc(y, best)}},
              "hog+cnn/logreg": {"features": "hog+cnn", "cv": {"auc": auc(y, blurred)}}}
    loss = auc(y, best) - auc(y, blurred)
    chosen, tests = select_model(models, oof, y, groups, n_boot=300, margin=0.002)
    assert 0 < tests["hog+cnn/logreg"]["ci"][0] and tests["hog+cnn/logreg"]["ci"][1] < 0.002
    assert 0.0003 < loss < 0.002 and chosen == "hog+cnn/logreg"
    assert select_model(models, oof, y, groups, n_boot=300, margin=0.0)[0] == \
        "hog+lbp+cnn/logreg"


def test_rerun_loads_fitted_models_from_the_cache(synthetic_data, tmp_path, monkeypatch):
    argv = ["--data", str(synthetic_data), "--features", "hog", "--heads", "logreg",
            "--cv", "3", "--n-boot", "30", "--quiet", "--no-save",
            "--cache-dir", str(tmp_path / "cache")]
    assert run.main(argv + ["--out", str(tmp_path / "first")]) == 0
    rule = ["--threshold-rule", "sensitivity:0.9"]
    assert run.main(argv[:-1] + ["none", "--out", str(tmp_path / "fresh_rule")] + rule) == 0

    def no_refit(*args, **kwargs):
        raise AssertionError("a rerun with the same data and settings refitted a model")
    monkeypatch.setattr(DecisionClassifier, "fit", no_refit)
    assert run.main(argv + ["--out", str(tmp_path / "again")]) == 0
    first, again = (json.loads((tmp_path / d / "metrics.json").read_text())["models"]
                    for d in ("first", "again"))
    assert first == again
    # another threshold rule re-chooses the threshold from the cached fits, as a fresh fit would
    assert run.main(argv + ["--out", str(tmp_path / "rule")] + rule) == 0
    fresh, cached = (json.loads((tmp_path / d / "metrics.json").read_text())["models"]
                     for d in ("fresh_rule", "rule"))
    assert cached == fresh
    assert cached["hog/logreg"]["cv"]["threshold"] != first["hog/logreg"]["cv"]["threshold"]
    # another seed means other folds: the fits are not in the cache
    with pytest.raises(AssertionError, match="refitted"):
        run.main(argv + ["--out", str(tmp_path / "seed1"), "--seed", "1"])
    # so does a head with other parameters
    make_head = run.make_head
    monkeypatch.setattr(run, "make_head",
                        lambda name, seed=0: make_head(name, seed).set_params(logreg__C=0.1))
    with pytest.raises(AssertionError, match="refitted"):
        run.main(argv + ["--out", str(tmp_path / "otherC")])


def test_prediction_tables_reproduce_the_reported_metrics(trained_run, synthetic_data):
    import csv
    results = json.loads((trained_run / "metrics.json").read_text())
    for part, n in (("cv", 30), ("eval", 12)):
        with open(trained_run / f"predictions_{part}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == n and len({r["path"] for r in rows}) == n
        assert list(rows[0])[:3] == ["path", "true_label", "patient"]  # not "label"
        y = np.array([int(r["true_label"]) for r in rows])
        for name, model in results["models"].items():
            p = np.array([float(r[name]) for r in rows])
            assert auc(y, p) == pytest.approx(model[part]["auc"]), (part, name)
            predicted = p >= model[part]["threshold"]
            assert np.mean(predicted == y) == pytest.approx(model[part]["accuracy"])
    with open(trained_run / "predictions_cv.csv") as handle:
        rows = list(csv.DictReader(handle))
    folds = {}
    for r in rows:  # a patient's images share one fold
        assert folds.setdefault(r["patient"], r["fold"]) == r["fold"]
    assert sorted(set(folds.values())) == ["0", "1", "2"]


def test_finetuned_baseline_is_used_only_on_the_same_folds_and_follows_the_threshold_rule(
        synthetic_data, tmp_path):
    import os

    from pipelines.baselines import finetuned_baselines
    from pipelines.metrics import choose_threshold
    from xray_features import index_dataset, make_folds
    from xray_features.dataset import fold_of

    train = index_dataset(synthetic_data).subset("train")
    folds = make_folds(train.labels, train.groups, n_splits=3, seed=0)
    proba = np.random.default_rng(0).random(len(train)) * 0.5 + train.labels * 0.4
    oof_dir = tmp_path / "oof"
    oof_dir.mkdir()

    def write(name, fold):
        with open(oof_dir / f"{name}.csv", "w") as handle:
            handle.write("path,label,fold,proba\n")
            for record, k, p in zip(train.records, fold, proba):
                handle.write(f"{os.path.relpath(record.path, train.root)},{record.label},{k},{p}\n")

    write("same_folds", list(fold_of(folds, len(train))))
    write("other_folds", [(k + 1) % 3 for k in fold_of(folds, len(train))])
    rules = ("youden", "sensitivity:0.9")
    assert len({choose_threshold(train.labels, proba, rule) for rule in rules}) == 2
    for rule in rules:
        found = list(finetuned_baselines(train, folds, oof_dir=oof_dir, models_dir=tmp_path,
                                         threshold_rule=rule))
        assert [b["name"] for b in found] == ["baseline/same_folds"]
        np.testing.assert_allclose(found[0]["oof"], proba)
        assert found[0]["threshold"] == choose_threshold(train.labels, proba, rule)
        assert found[0]["eval"] is None


def test_unpackaged_baseline_takes_saved_eval_scores_matched_by_content(synthetic_data, tmp_path):
    import os

    from pipelines.baselines import finetuned_baselines
    from xray_features import index_dataset, make_folds
    from xray_features.dataset import fold_of
    from xray_features.hashing import file_sha256

    index = index_dataset(synthetic_data)
    train, test = index.subset("train"), index.subset("test")
    folds = make_folds(train.labels, train.groups, n_splits=3, seed=0)
    (tmp_path / "site_val").mkdir()
    with open(tmp_path / "net.csv", "w") as handle:
        handle.write("path,label,fold,proba\n")
        for record, k in zip(train.records, fold_of(folds, len(train))):
            handle.write(f"{os.path.relpath(record.path, train.root)},{record.label},{k},0.5\n")
    saved = {file_sha256(p): 0.01 * i for i, p in enumerate(test.paths)}

    def write_saved(rows):
        with open(tmp_path / "site_val" / "net.csv", "w") as handle:
            handle.write("path,label,fold,proba,sha256\n")
            for i, (digest, proba) in enumerate(rows):
                handle.write(f"renamed/{i}.png,0,-1,{proba},{digest}\n")

    def eval_scores():
        (found,) = finetuned_baselines(train, folds, test, oof_dir=tmp_path, models_dir=tmp_path)
        return found["eval"]

    write_saved(reversed(list(saved.items())))  # any order, any names: matched by content
    np.testing.assert_allclose(eval_scores(), [saved[file_sha256(p)] for p in test.paths])
    write_saved(list(saved.items())[1:])  # one evaluation image not scored: no eval scores
    assert eval_scores() is None


@pytest.mark.parametrize("n", [3, 10, 19, 20])
def test_report_curves_get_distinct_colours(n):
    from pipelines.report import curve_colours
    colours = curve_colours(n)
    assert len(colours) == n and len(set(colours)) == n


def test_packaged_baselines_state_their_preprocessing():
    from xray_features.cnn import MODELS_DIR

    for model in sorted(MODELS_DIR.glob("cnn_*.onnx")):
        spec = json.loads(model.with_suffix(".preprocess.json").read_text())
        assert isinstance(spec["lung_crop"], bool) and spec["resize_mode"] in {"pad", "squash"}


def test_packaged_baseline_without_preprocessing_sidecar_is_refused(tmp_path):
    import shutil

    from pipelines.baselines import packaged_cnn_scores
    from xray_features.cnn import MODELS_DIR

    model = tmp_path / "cnn_small64_noaug.onnx"
    shutil.copy(MODELS_DIR / model.name, model)
    with pytest.raises(FileNotFoundError, match="cnn_small64_noaug.preprocess.json missing"):
        packaged_cnn_scores(model, [])


def test_packaged_finetuned_cnn_reproduces_its_saved_site_val_scores(data_root):
    """The 224-px fine-tuned CNN shipped as a baseline scores site_val as its
    GPU study did (xray_features/models/oof/site_val, written by finetune_export.py)."""
    from pipelines.baselines import OOF_DIR, packaged_cnn_scores, saved_eval_scores
    from xray_features.cnn import MODELS_DIR

    site = index_dataset(data_root).subset("site_val")
    paths = site.paths[::4]
    saved = saved_eval_scores(OOF_DIR / "site_val" / "cnn_ft224_cs_acq_cs.csv", paths)
    got = packaged_cnn_scores(MODELS_DIR / "cnn_ft224_cs_acq_cs.onnx", paths)
    np.testing.assert_allclose(got, saved, atol=2e-6)  # the table keeps 6 decimals


def test_console_table_columns_line_up_for_long_names():
    from pipelines.run import _console_table

    cv = {"auc": 0.99, "accuracy": 0.95}
    models = {"hog/logreg": {"cv": cv},
              "baseline/a_much_longer_baseline_name_than_usual": {"cv": cv, "eval": {
                  "auc": 0.9, "accuracy": 0.8, "sensitivity": 0.7, "specificity": 0.6}}}
    lines = _console_table(models).splitlines()
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header
    assert lines[2].split()[1:] == ["0.990", "0.950", "0.900", "0.800", "0.700", "0.600"]


def test_selection_is_recorded_and_packaged_cnns_without_predictions_are_named(trained_run):
    """On the user's own data (the synthetic set) no packaged CNN has out-of-fold
    predictions: each is named as left out, with the reason; the original image
    shapes are unknown, so the shift step is skipped and recorded as such."""
    from xray_features.cnn import MODELS_DIR

    metrics = json.loads((trained_run / "metrics.json").read_text())
    selection = metrics["selection"]
    assert selection["selected"] == metrics["selected"]
    assert selection["rule"].startswith("Candidates:")
    assert selection["native_shapes_known"] == 0
    candidates = {n for n in metrics["models"] if not n.startswith("baseline/")}
    assert set(selection["evidence"]) == candidates
    assert all(e["shortcut_reliance"] is None for e in selection["evidence"].values())
    for network in MODELS_DIR.glob("cnn_*.onnx"):
        assert "no out-of-fold predictions" in selection["left_out"][f"baseline/{network.stem}"]
    assert selection["left_out"]["baseline/cnn-probe"] == "the same model as cnn/logreg"
    report = (trained_run / "report.md").read_text()
    assert "How the model was chosen" in report and "left out: packaged, but" in report


def test_selection_prefers_less_shortcut_reliance_among_cv_equals():
    """Step 2: of two models with the same CV AUC, the one whose score follows
    the original shape more (beyond the margin) is set aside, even when cheaper."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 300)
    groups = np.arange(600)
    signal = y + rng.normal(0, 0.6, 600)
    oof = {"hog/logreg": signal, "hog+cnn/logreg": signal + rng.normal(0, 0.01, 600)}
    models = {n: {"features": n.split("/")[0], "cv": {"auc": auc(y, p)}} for n, p in oof.items()}
    assert select_model(models, oof, y, groups, n_boot=200)[0] == "hog/logreg"  # cheaper
    reliance = {"hog/logreg": 0.30, "hog+cnn/logreg": 0.20}
    assert select_model(models, oof, y, groups, n_boot=200, reliance=reliance)[0] == \
        "hog+cnn/logreg"
    reliance["hog/logreg"] = 0.24  # within 0.05 of the least: the cheaper one again
    assert select_model(models, oof, y, groups, n_boot=200, reliance=reliance)[0] == "hog/logreg"


def test_shortcut_reliance_reads_the_shape_within_each_class():
    from pipelines.selection import shortcut_reliance

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    aspect = rng.uniform(1.0, 1.6, 400)
    honest = 0.2 + 0.6 * y + rng.normal(0, 0.05, 400)           # ignores the shape
    shortcut = np.clip(honest + 0.3 * (aspect - 1.3), 0.01, 0.99)  # follows it in each class
    assert abs(shortcut_reliance(y, np.clip(honest, 0.01, 0.99), aspect)["mean"]) < 0.15
    follows = shortcut_reliance(y, shortcut, aspect)
    assert follows["normal"] > 0.5 and follows["pneumonia"] > 0.5 and follows["n"] == 400
    aspect[::2] = np.nan  # unknown shapes are left out
    assert shortcut_reliance(y, shortcut, aspect)["n"] == 200


def test_shortcut_reliance_counts_a_score_that_falls_with_the_shape():
    """Reading the distortion backwards is reliance too: the figure is the mean
    of the two within-class |rho|, so opposite signs do not cancel."""
    from pipelines.selection import shortcut_reliance

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 200)
    aspect = rng.uniform(1.0, 1.6, 400)
    sign = np.where(y == 0, 1.0, -1.0)  # rises with the shape in NORMAL, falls in PNEUMONIA
    p = np.clip(0.2 + 0.6 * y + sign * 0.3 * (aspect - 1.3) + rng.normal(0, 0.01, 400), 0.01, 0.99)
    reliance = shortcut_reliance(y, p, aspect)
    assert reliance["normal"] > 0.5 and reliance["pneumonia"] < -0.5
    assert reliance["mean"] > 0.5
