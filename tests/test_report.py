"""The report: at-a-glance box first, operating points, trade-off, histograms,
the gallery of worst errors with occlusion maps, environment in metrics.json."""

import json
import re
import subprocess

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from pipelines import report
from pipelines.metrics import binary_metrics
from pipelines.persist import load_model
from xray_features.dataset import index_dataset


def test_sections_in_order_and_self_contained(trained_run):
    html = (trained_run / "report.html").read_text()
    order = [html.find(marker) for marker in
             ("id='at-a-glance'", "id='plots'", "id='details'", "id='environment'")]
    assert -1 not in order and order == sorted(order), order
    glance = html[order[0]:order[1]]
    for word in ("Selected model", "Sensitivity", "Specificity", "PPV", "NPV", "prevalence",
                 "goal", "Intended use", "Not a medical device"):
        assert word in glance, word
    # nothing fetched from elsewhere: every image inline, no scripts or style sheets
    assert not re.search(r"<(script|link|iframe)\b", html)
    sources = re.findall(r"src='([^']*)'", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for name in ("roc_eval.png", "tradeoff_eval.png", "histogram_eval.png", "tradeoff_cv.png",
                 "histogram_cv.png"):
        assert (trained_run / name).stat().st_size > 0, name
    assert "class='grid'" in html
    markdown = (trained_run / "report.md").read_text()
    assert markdown.index("## At a glance") < markdown.index("## Plots") < markdown.index(
        "## Details")


def test_glance_figures_follow_from_the_confusion(trained_run):
    results = json.loads((trained_run / "metrics.json").read_text())
    glance = results["at_a_glance"]
    assert glance["model"] == results["selected"] and glance["part"] == "eval"
    m = results["models"][results["selected"]]["eval"]
    c = m["confusion"]
    assert glance["prevalence"] == pytest.approx((c["tp"] + c["fn"]) / m["n"])
    rows = glance["metrics"]
    assert rows["Sensitivity"]["value"] == m["sensitivity"]
    assert rows["Sensitivity"]["ci"] == m["ci"]["sensitivity"]
    assert rows["Sensitivity"]["met"] == (m["sensitivity"] >= report.GOAL["sensitivity"])
    if c["tp"] + c["fp"]:
        assert rows["PPV"]["value"] == pytest.approx(c["tp"] / (c["tp"] + c["fp"]))
    low, high = rows["NPV"]["ci"]
    assert low <= rows["NPV"]["value"] <= high


def test_wilson_interval():
    low, high = report._wilson(45, 50)
    assert low == pytest.approx(0.7864, abs=1e-3) and high == pytest.approx(0.9565, abs=1e-3)
    assert report._wilson(0, 0) != report._wilson(0, 0)  # nan when nothing was called


def test_environment_in_metrics_json(trained_run):
    env = json.loads((trained_run / "metrics.json").read_text())["environment"]
    import numpy
    import sklearn
    assert env["versions"]["numpy"] == numpy.__version__
    assert env["versions"]["scikit-learn"] == sklearn.__version__
    head = subprocess.run(["git", "-C", str(report.Path(report.__file__).parent), "rev-parse",
                           "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert env["git_commit"] == head.stdout.strip()


def test_tradeoff_rates_match_binary_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    rates = report._rates(y, p, [0.4, 0.6])
    for k, t in enumerate((0.4, 0.6)):
        m = binary_metrics(y, p, t)
        assert rates["sensitivity"][k] == pytest.approx(m["sensitivity"])
        assert rates["specificity"][k] == pytest.approx(m["specificity"])
        c = m["confusion"]
        assert rates["PPV"][k] == pytest.approx(c["tp"] / (c["tp"] + c["fp"]))


class _TopLeftBrightness(BaseEstimator):
    """A 'model' that calls pneumonia from the top-left quarter's brightness."""

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def predict_proba(self, images):
        p = np.array([im[: im.shape[0] // 4, : im.shape[1] // 4].mean() for im in images])
        return np.column_stack([1 - p, p])


def test_occlusion_map_finds_what_the_model_reads():
    image = np.full((96, 96), 0.2, np.float32)
    image[:24, :24] = 0.9
    pipeline = Pipeline([("read", FunctionTransformer()), ("model", _TopLeftBrightness())])
    shown, heat, p = report.occlusion_map(pipeline, image, grid=7)
    assert p == pytest.approx(0.9)
    assert heat[:24, :24].mean() > 0.2  # hiding the bright corner lowers the score
    assert abs(heat[48:, 48:]).max() < 1e-6  # the rest is ignored by the model


def test_worst_cases_are_the_most_confident_errors():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.9, 0.6, 0.1, 0.2, 0.05, 0.8])
    cases = report.worst_cases(y, p, 0.5, k=1)
    assert cases == {"false positive": [0], "false negative": [4]}


def test_gallery_rescores_the_saved_model(trained_run, synthetic_data, tmp_path):
    model, metadata = load_model(trained_run / "models" / "hog-logreg.joblib")
    test = index_dataset(synthetic_data / "test")
    p = model.predict_proba(list(test.paths))[:, 1]
    wrong = 1 - test.labels  # every film an error, so the gallery is full
    entries = report.plot_gallery(tmp_path, {"pipeline": model, "paths": list(test.paths),
                                             "y": wrong, "p": p, "threshold": 0.5}, k=2)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("false positive") <= 2 and kinds.count("false negative") <= 2
    assert entries and all(e["png"].stat().st_size > 0 for e in entries)
    for e in entries:  # the occlusion's unmasked score is the model's own
        assert e["p_rescored"] == pytest.approx(e["p"], abs=1e-6)


def test_log_look_appends_one_row_per_look_and_opens_a_table_after_prose(tmp_path, capsys):
    log = tmp_path / "runs" / "looks.md"
    cv = {"auc": 0.99, "accuracy": 0.95, "sensitivity": 0.96, "specificity": 0.94, "threshold": 0.5}
    site = {"auc": 0.9, "accuracy": 0.8, "sensitivity": 0.99, "specificity": 0.6}
    first = report.log_look(log, "model a", cv, site)
    assert capsys.readouterr().out == ""  # no record named: nothing printed
    second = report.log_look(log, "model b", cv, site, record="the tracked log")
    assert capsys.readouterr().out.splitlines() == [f"look logged in {log}; add it to the tracked log:",
                                                    second]
    with open(log, "a") as handle:
        handle.write("\nA note between looks.\n")
    third = report.log_look(log, "model c", cv, site)
    lines = log.read_text().splitlines()
    assert [line for line in lines if "| model " in line] == [first, second, third]
    assert sum(line.startswith("| when (UTC)") for line in lines) == 2
    assert first.split(" | ")[1:] == ["model a", "0.9900", "0.950", "0.960", "0.940", "0.500",
                                      "0.9000", "0.800", "0.990", "0.600 |"]
