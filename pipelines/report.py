"""Write a comparison report: metrics.json, report.md, report.html, plots and
per-image predictions."""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from .decision import logit  # noqa: E402
from .persist import atomic_write_bytes  # noqa: E402

__all__ = ["write_report", "write_predictions", "read_predictions", "log_look", "plot_roc",
           "plot_confusions", "plot_calibration",
           "plot_tradeoff", "plot_histograms", "occlusion_map", "at_a_glance", "environment",
           "GOAL", "INTENDED_USE", "TRUE_LABEL"]

_SHOWN = ("auc", "accuracy", "sensitivity", "specificity", "f1", "brier")
# the project's goal at a new site (docs/results.md, *Against the published anchors*)
GOAL = {"auc": 0.97, "accuracy": 0.93, "sensitivity": 0.93, "specificity": 0.90}
INTENDED_USE = (
    "Research use: sorting pediatric (ages 1-5) anterior-posterior chest X-rays into NORMAL or "
    "PNEUMONIA, to study classical-plus-deep features. Trained on one public data set "
    "(Kermany et al. 2018, one hospital). Not a medical device: not for diagnosis, triage or "
    "any decision about a patient. A new site must check it on its own labelled films first.")
# the ground-truth column of predictions_cv.csv and predictions_eval.csv (0 NORMAL, 1 PNEUMONIA)
TRUE_LABEL = "true_label"
# packages whose versions metrics.json records (absent ones as null)
_ENVIRONMENT_PACKAGES = ("xray-hybrid", "numpy", "scipy", "scikit-learn", "scikit-image",
                         "opencv-python-headless", "onnxruntime", "xgboost", "xgboost-cpu",
                         "joblib", "pydicom", "matplotlib", "skl2onnx", "onnxmltools")


def curve_colours(n):
    """``n`` distinct colours: tab10's, or tab20's when more curves share a plot."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_roc(path, y, probas, title, reference=None, thresholds=None, selected=None):
    """ROC curves; with ``thresholds`` ({model: threshold}) each model's
    operating point is marked, the ``selected`` model's as a large star."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    y = np.asarray(y)
    for (name, p), colour in zip(probas.items(), curve_colours(len(probas))):
        fpr, tpr, _ = roc_curve(y, p)
        style = "--" if name == reference or name.startswith("baseline/") else "-"
        width = 2.5 if name == selected else 1.5
        ax.plot(fpr, tpr, style, color=colour, lw=width, label=f"{name}")
        if thresholds and name in thresholds:
            called = np.asarray(p) >= thresholds[name]
            point = (called[y == 0].mean(), called[y == 1].mean())
            big = name == selected
            ax.plot(*point, "*" if big else "o", color=colour, ms=16 if big else 6,
                    mec="black", mew=1 if big else 0.5, zorder=5,
                    label=(f"operating point of {name} (threshold {thresholds[name]:.3f})"
                           if big else None))
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def _rates(y, p, thresholds):
    """Sensitivity, specificity, PPV and NPV of ``p`` at each threshold."""
    y = np.asarray(y).astype(bool)
    called = np.asarray(p)[None, :] >= np.asarray(thresholds)[:, None]
    tp = (called & y).sum(1)
    fp = (called & ~y).sum(1)
    fn = (~called & y).sum(1)
    tn = (~called & ~y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                "PPV": tp / (tp + fp), "NPV": tn / (tn + fn)}


def plot_tradeoff(path, y, p, threshold, title):
    """Sensitivity, specificity, PPV and NPV against the threshold, with the
    chosen threshold and the goal's sensitivity and specificity marked."""
    grid = np.linspace(0, 1, 401)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    styles = {"sensitivity": ("-", "tab:red"), "specificity": ("-", "tab:blue"),
              "PPV": ("--", "tab:orange"), "NPV": ("--", "tab:green")}
    for name, values in _rates(y, p, grid).items():
        style, colour = styles[name]
        ax.plot(grid, values, style, color=colour, lw=1.6, label=name)
    ax.axvline(threshold, color="black", lw=1.2, label=f"chosen threshold {threshold:.3f}")
    for name in ("sensitivity", "specificity"):
        ax.axhline(GOAL[name], color=styles[name][1], lw=0.8, ls=":",
                   label=f"goal: {name} ≥ {GOAL[name]:.2f}")
    ax.set(xlabel="threshold on P(pneumonia)", ylabel="rate", title=title, ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower center", ncol=2)
    _save(fig, path)


def plot_histograms(path, y, p, threshold, title):
    """The score distribution of each true class, with the threshold."""
    y = np.asarray(y).astype(bool)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(0, 1, 41)
    ax.hist(np.asarray(p)[~y], bins=bins, alpha=0.6, color="tab:blue",
            label=f"truly NORMAL (n={int((~y).sum())})")
    ax.hist(np.asarray(p)[y], bins=bins, alpha=0.6, color="tab:red",
            label=f"truly PNEUMONIA (n={int(y.sum())})")
    ax.axvline(threshold, color="black", lw=1.2, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="P(pneumonia)", ylabel="films", title=title, yscale="log")
    ax.legend(fontsize=7, loc="upper center")
    _save(fig, path)


def plot_confusions(path, confusions, title):
    """One confusion matrix per model (``confusions``: {model: 2x2 counts}) in a
    grid, saved to ``path``."""
    names = list(confusions)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        c = confusions[name]
        matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > matrix.max() / 2 else "black")
        ax.set_xticks([0, 1], ["NORMAL", "PNEU."], fontsize=7)
        ax.set_yticks([0, 1], ["NORMAL", "PNEU."], fontsize=7)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title + " (rows: truth, columns: prediction)", fontsize=9)
    _save(fig, path)


def plot_calibration(path, y, probas, title):
    """Reliability curves of every model's probabilities, saved to ``path``."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for (name, p), colour in zip(probas.items(), curve_colours(len(probas))):
        frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, "o-", color=colour, ms=3, lw=1.2, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="fraction with pneumonia", title=title)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value, ci=None):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.3f}"
    return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else text


def _metric_rows(models, part):
    rows = []
    for name, result in models.items():
        m = result.get(part)
        if not m:
            continue
        ci = m.get("ci", {})
        rows.append([name] + [_fmt(m[k], ci.get(k)) for k in _SHOWN]
                    + [f"{m['threshold']:.3f}", str(m["n"])])
    return rows


def _tables(results):
    header = ["model", *_SHOWN, "threshold", "n"]
    tables = [("Cross-validation (out-of-fold, patient-grouped), at the chosen threshold",
               header, _metric_rows(results["models"], "cv")),
              ("Cross-validation at threshold 0.5", header,
               _metric_rows(results["models"], "cv_at_0.5"))]
    if any("eval" in m for m in results["models"].values()):
        tables.append((f"Evaluation on {results.get('eval_dir')}, at the chosen threshold",
                       header, _metric_rows(results["models"], "eval")))
        tables.append(("Evaluation at threshold 0.5", header,
                       _metric_rows(results["models"], "eval_at_0.5")))
    for key, title in (("comparisons", f"Paired comparison with {results['baseline']} "
                                        "(AUC difference)"),
                       ("selected_vs_baselines", f"Paired comparison of the selected model, "
                        f"{results.get('selected')}, with each pure-CNN baseline "
                        "(ΔAUC = selected - baseline)"),
                       ("hybrid_vs_baselines", "Paired comparison of the best feature-set "
                        f"model, {results.get('best_feature_set_model')}, with each pure-CNN "
                        "baseline (ΔAUC = feature-set model - baseline; negative: the CNN "
                        "wins)")):
        comparisons = results.get(key, {})
        if comparisons:
            rows = [[name, part, f"{c['diff']:+.4f}", f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]",
                     f"{c['delong_p']:.3g}", f"{c['bootstrap_p']:.3g}", c["verdict"]]
                    for name, parts in comparisons.items() for part, c in parts.items()]
            tables.append((title, ["model", "data", "ΔAUC", "95% CI (patient bootstrap)",
                                   "DeLong p", "bootstrap p", "verdict"], rows))
    selection = results.get("selection")
    if selection:
        tables.append(_selection_table(selection))
    folds = results.get("per_fold", [])
    if folds:
        tables.append(("Per fold (AUC at each fold's held-out patients)",
                       ["model"] + [f"fold {k}" for k in range(len(folds[0]["auc"]))],
                       [[f["model"]] + [f"{v:.3f}" for v in f["auc"]] for f in folds]))
    return tables


def _selection_table(selection):
    """The selection rule's evidence, one row per candidate (the choice first)."""
    rows = []
    order = sorted(selection["evidence"], key=lambda n: n != selection["selected"])
    for name in order:
        e = selection["evidence"][name]
        loss = e.get("auc_loss_vs_best")
        reliance = e.get("shortcut_reliance")
        rows.append([name + (" (selected)" if name == selection["selected"] else ""),
                     f"{e['cv_auc']:.4f}",
                     "best" if loss is None else f"[{loss['ci'][0]:+.4f}, {loss['ci'][1]:+.4f}]",
                     "–" if not reliance else f"{reliance['normal']:+.3f} / "
                     f"{reliance['pneumonia']:+.3f} / {reliance['mean']:+.3f}",
                     str(e["passes"])])
    rows += [[name, "–", "left out: " + why, "–", "–"]
             for name, why in selection.get("left_out", {}).items()]
    title = (f"How the model was chosen (training data only). {selection['rule']} Margins: "
             f"CV AUC {selection['margin']}, shortcut reliance {selection['reliance_margin']}; "
             f"original shapes known for {selection['native_shapes_known']} training images.")
    return (title, ["candidate", "CV AUC", "AUC(best) - AUC, 95% CI",
                    "shortcut reliance rho (NORMAL / PNEUMONIA / mean)", "feature passes"], rows)


def _setup(results):
    return (f"{results['n_train']} training images, {results['cv_folds']}-fold patient-grouped "
            f"CV (seed {results['seed']}), threshold rule {results['threshold_rule']}, "
            f"augmentation {results.get('augment', 'none')}"
            + (", test-time zoom views (mean logit)" if results.get("tta") else "") + ".")


def _wilson(k, n, z=1.96):
    """Wilson score interval of the proportion ``k / n``."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))]


def at_a_glance(results):
    """What the report's top box says, from ``results`` (metrics.json): the
    selected model's sensitivity, specificity (patient-bootstrap CIs), PPV and
    NPV (Wilson CIs) at its threshold and at the prevalence of the films it was
    evaluated on (the evaluation set if there is one, else out-of-fold CV), each
    beside the goal where the goal sets one."""
    name = results["selected"]
    model = results["models"][name]
    part = "eval" if "eval" in model else "cv"
    m = model[part]
    c = m["confusion"]
    ci = m.get("ci", {})
    n_pos, n_neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    rows = {}
    for key, label in (("sensitivity", "Sensitivity"), ("specificity", "Specificity")):
        rows[label] = {"value": m[key], "ci": ci.get(key), "ci_method": "patient bootstrap",
                       "goal": GOAL[key]}
    for label, k, n in (("PPV", c["tp"], c["tp"] + c["fp"]), ("NPV", c["tn"], c["tn"] + c["fn"])):
        rows[label] = {"value": k / n if n else float("nan"), "ci": _wilson(k, n),
                       "ci_method": "Wilson", "goal": None}
    rows["AUC"] = {"value": m["auc"], "ci": ci.get("auc"), "ci_method": "patient bootstrap",
                   "goal": GOAL["auc"]}
    for row in rows.values():
        row["met"] = None if row["goal"] is None else bool(row["value"] >= row["goal"])
    return {"model": name, "part": part,
            "evaluated_on": (results.get("eval_dir") if part == "eval"
                             else f"out-of-fold predictions on the {results['n_train']} "
                                  "training films (no evaluation set given)"),
            "n": m["n"], "n_pneumonia": n_pos, "n_normal": n_neg,
            "prevalence": n_pos / m["n"] if m["n"] else float("nan"),
            "threshold": m["threshold"], "threshold_rule": results.get("threshold_rule"),
            "metrics": rows, "intended_use": INTENDED_USE}


def environment():
    """Package versions, Python, platform and the git commit of this code
    (``None`` outside a git checkout; ``git_dirty``: tracked files edited)."""
    from importlib.metadata import distributions

    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}
    versions = {name: installed.get(name) for name in _ENVIRONMENT_PACKAGES}
    here = os.path.dirname(os.path.abspath(__file__))
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "-C", here, "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit, "git_dirty": dirty}


def occlusion_map(pipeline, image, grid=7, max_side=512):
    """Occlusion sensitivity of a fitted pipeline (``read`` first) on one image.

    A square of a quarter of each side, moved over a ``grid`` x ``grid``
    lattice, is filled with the image's mean and the film rescored by the whole
    pipeline after ``read``: the map is the drop in P(pneumonia) where that
    square hid the film, in logits (a film scored 0.999 still shows what
    moves it), averaged over the squares covering each pixel (positive: the
    region pushed the score towards PNEUMONIA). Model-agnostic:
    it explains the hybrid (HOG, LBP, CNN and head together), not one network.

    Returns ``(image, heat, p)``: the image (downscaled to ``max_side``), the
    map at its size, and the unoccluded probability.
    """
    import cv2

    scale = max_side / max(image.shape)
    if scale < 1:
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    ph, pw = h // 4, w // 4
    tops = np.linspace(0, h - ph, grid).round().astype(int)
    lefts = np.linspace(0, w - pw, grid).round().astype(int)
    fill = float(image.mean())
    copies, boxes = [image], []
    for top in tops:
        for left in lefts:
            copy = image.copy()
            copy[top:top + ph, left:left + pw] = fill
            copies.append(copy)
            boxes.append((top, left))
    steps = pipeline[1:] if hasattr(pipeline, "steps") else pipeline
    p = steps.predict_proba(copies)[:, 1]
    z = logit(p)
    heat, count = np.zeros_like(image), np.zeros_like(image)
    for (top, left), score in zip(boxes, z[1:]):
        heat[top:top + ph, left:left + pw] += z[0] - score
        count[top:top + ph, left:left + pw] += 1
    return image, heat / np.maximum(count, 1), float(p[0])


def worst_cases(y, p, threshold, k=3):
    """Indices of the ``k`` most confident false positives (NORMAL films with
    the highest P(pneumonia) at or above the threshold) and false negatives
    (PNEUMONIA films with the lowest P below it)."""
    y, p = np.asarray(y).astype(int), np.asarray(p)
    fp = np.flatnonzero((y == 0) & (p >= threshold))
    fn = np.flatnonzero((y == 1) & (p < threshold))
    return {"false positive": list(fp[np.argsort(-p[fp], kind="stable")][:k]),
            "false negative": list(fn[np.argsort(p[fn], kind="stable")][:k])}


def plot_gallery(out_dir, examples, k=3, grid=7):
    """One PNG per worst false positive / negative of ``examples`` (the
    selected model's fitted ``pipeline``, ``paths``, true ``y``, probabilities
    ``p``, ``threshold``): the film and its occlusion map side by side.
    Returns ``[{"kind", "path", "p", "png"}]``; unreadable films are skipped."""
    from xray_features.io import XrayReadError, read_xray

    entries = []
    for kind, rows in worst_cases(examples["y"], examples["p"], examples["threshold"], k).items():
        for rank, i in enumerate(rows):
            path = str(examples["paths"][i])
            try:
                film = read_xray(path)
            except XrayReadError:
                continue
            image, heat, p_now = occlusion_map(examples["pipeline"], film, grid)
            fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.1))
            axes[0].imshow(image, cmap="gray")
            axes[1].imshow(image, cmap="gray")
            limit = max(float(np.abs(heat).max()), 1e-3)
            shown = axes[1].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.55)
            bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03)
            bar.set_label("drop in logit P(pneumonia) when hidden", fontsize=7)
            bar.ax.tick_params(labelsize=7)
            for ax in axes:
                ax.axis("off")
            truth = "NORMAL" if kind == "false positive" else "PNEUMONIA"
            axes[0].set_title(f"{kind}: truly {truth}\nP(pneumonia) {examples['p'][i]:.3f}",
                              fontsize=8)
            axes[1].set_title("occlusion map\nred: read as pneumonia", fontsize=8)
            png = Path(out_dir) / f"worst_{kind.split()[1]}_{rank + 1}.png"
            _save(fig, png)
            entries.append({"kind": kind, "path": path, "p": float(examples["p"][i]),
                            "p_rescored": p_now, "png": png})
    return entries


def _glance_rows(glance):
    """(label, value [CI], goal text, css class) per row of the box."""
    rows = []
    for label, row in glance["metrics"].items():
        if row["goal"] is None:
            goal, css = "–", ""
        else:
            goal = f"≥ {row['goal']:.2f}: " + ("met" if row["met"] else "NOT met")
            css = "met" if row["met"] else "notmet"
        rows.append((label, _fmt(row["value"], row["ci"]), goal, css))
    return rows


def _glance_lead(glance):
    return (f"Selected model: {glance['model']}, at threshold {glance['threshold']:.3f} "
            f"({glance['threshold_rule']}). Evaluated on {glance['evaluated_on']}: "
            f"{glance['n']} films, {glance['n_pneumonia']} with pneumonia (prevalence "
            f"{glance['prevalence']:.1%}; PPV and NPV hold at this prevalence only).")


def _plot_caption(plot):
    captions = {"roc": "ROC; the star is the selected model's operating point, dots the others'",
                "tradeoff": "Sensitivity, specificity, PPV and NPV against the threshold",
                "histogram": "Scores of each true class (log scale), with the threshold",
                "calibration": "Calibration (predicted against observed)",
                "confusion": "Confusion matrices at the chosen thresholds"}
    part = ("evaluation set" if plot.stem.endswith("_eval") else "cross-validation"
            if plot.stem.endswith("_cv") else "")
    kind = plot.stem.split("_")[0]
    return f"{captions.get(kind, plot.stem)}{', ' + part if part else ''}."


def _markdown(results, tables, plots, glance=None, gallery=()):
    lines = ["# xray-hybrid comparison report", ""]
    if glance:
        lines += ["## At a glance", "", _glance_lead(glance), "",
                  "| | value [95% CI] | goal |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c, _ in _glance_rows(glance)]
        lines += ["", f"**Intended use.** {glance['intended_use']}", ""]
    lines.append("## Plots")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    if gallery:
        lines += ["", "## The films the model got most wrong", ""]
        lines += [f"![{e['png'].stem}]({e['png'].name}) {e['kind']}: `{e['path']}`" for e in gallery]
    lines += ["", "## Details", "", f"Command: `{results['command']}`", "", _setup(results), "",
              results["summary"], ""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    env = results.get("environment")
    if env:
        lines += ["## Environment", "", f"git commit {env['git_commit']}"
                  + (" (with uncommitted edits)" if env["git_dirty"] else "")
                  + f", Python {env['python']}; "
                  + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), ""]
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:0 12px;"
        "color:#222}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px}.glance{border:3px solid #1f4e79;border-radius:8px;padding:10px 18px;"
        "background:#f3f7fb;margin:12px 0}.glance table{font-size:16px}.glance td,.glance th"
        "{border:none;border-bottom:1px solid #cdd;padding:4px 14px}.met{color:#1a7f37}"
        ".notmet{color:#b42318;font-weight:bold}.warn{background:#fff4e5;border-left:4px solid "
        "#e8590c;padding:6px 10px}.grid{display:grid;grid-template-columns:repeat(auto-fill,"
        "minmax(460px,1fr));gap:14px}figure{margin:0;border:1px solid #ddd;padding:6px}"
        "figure img{max-width:100%;height:auto}figcaption{font-size:12px;color:#555}"
        "details{margin:10px 0}code{font-size:12px}")


def _img(path):
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<img alt='{html.escape(Path(path).stem)}' src='data:image/png;base64,{data}'>"


def _html(results, tables, plots, glance=None, gallery=()):
    parts = ["<!doctype html><html lang='en'><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width'><title>xray-hybrid report</title>",
             f"<style>{_CSS}</style>", "<h1>xray-hybrid comparison report</h1>"]
    if glance:
        cells = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td>"
                        f"<td class='{css}'>{html.escape(c)}</td></tr>"
                        for a, b, c, css in _glance_rows(glance))
        parts.append(
            "<section class='glance' id='at-a-glance'><h2>At a glance</h2>"
            f"<p>{html.escape(_glance_lead(glance))}</p>"
            f"<table><tr><th></th><th>value [95% CI]</th><th>goal</th></tr>{cells}</table>"
            f"<p class='warn'><b>Intended use.</b> {html.escape(glance['intended_use'])}</p>"
            "</section>")
    parts.append("<h2 id='plots'>Plots</h2><div class='grid'>")
    parts += [f"<figure>{_img(p)}<figcaption>{html.escape(_plot_caption(p))}</figcaption>"
              "</figure>" for p in plots]
    parts.append("</div>")
    if gallery:
        parts.append("<h2 id='worst'>The films the model got most wrong</h2><p>The most "
                     "confident false positives and false negatives of the selected model, each "
                     "beside its occlusion-sensitivity map: a square of a quarter of each side "
                     "was hidden at a time (7 x 7 positions) and the whole model rescored; red "
                     "marks regions whose hiding lowered the logit of P(pneumonia), i.e. what "
                     "the model read as pneumonia, blue what it read as normal.</p>"
                     "<div class='grid'>")
        parts += [f"<figure>{_img(e['png'])}<figcaption>{html.escape(e['kind'])}: "
                  f"<code>{html.escape(e['path'])}</code></figcaption></figure>" for e in gallery]
        parts.append("</div>")
    parts += ["<h2 id='details'>Details for researchers</h2>",
              f"<p>Command: <code>{html.escape(results['command'])}</code></p>",
              f"<p>{html.escape(_setup(results))}</p>",
              f"<p>{html.escape(results['summary'])}</p>"]
    for title, header, rows in tables:
        parts.append(f"<h3>{html.escape(title)}</h3><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                  for row in rows]
        parts.append("</table>")
    env = results.get("environment")
    if env:
        parts.append("<h2 id='environment'>Environment</h2><p>git commit <code>"
                     f"{html.escape(str(env['git_commit']))}</code>"
                     + (" (with uncommitted edits)" if env["git_dirty"] else "")
                     + f", Python {html.escape(env['python'])}; "
                     + html.escape(", ".join(f"{k} {v}" for k, v in env["versions"].items() if v))
                     + "</p>")
    return "\n".join(parts) + "\n</html>\n"


def write_report(out_dir, results, curves, examples=None):
    """Write everything into ``out_dir``.

    ``results`` is the metrics.json content (``environment`` and
    ``at_a_glance`` are added to it); ``curves`` maps ``"cv"`` / ``"eval"`` to
    ``(y, {model: probabilities})`` for the plots. ``examples`` (optional):
    the selected model's fitted ``pipeline`` with the ``paths``, true ``y`` and
    probabilities ``p`` of the films it was judged on and its ``threshold``,
    for the gallery of its worst errors.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.setdefault("environment", environment())
    selected = results.get("selected")
    glance = None
    if selected in results.get("models", {}):
        glance = results["at_a_glance"] = at_a_glance(results)
    plots = []
    for part in sorted(curves, key=lambda k: k != "eval"):  # the evaluation set first
        y, probas = curves[part]
        label = "cross-validation" if part == "cv" else "evaluation"
        thresholds = {n: m[part]["threshold"] for n, m in results["models"].items() if part in m}
        plot_roc(out_dir / f"roc_{part}.png", y, probas, f"ROC, {label}", results.get("baseline"),
                 thresholds=thresholds, selected=selected)
        plots.append(out_dir / f"roc_{part}.png")
        if selected in probas:
            plot_tradeoff(out_dir / f"tradeoff_{part}.png", y, probas[selected],
                          thresholds[selected], f"{selected}: threshold trade-off, {label}")
            plot_histograms(out_dir / f"histogram_{part}.png", y, probas[selected],
                            thresholds[selected], f"{selected}: scores by true class, {label}")
            plots += [out_dir / f"tradeoff_{part}.png", out_dir / f"histogram_{part}.png"]
    for part, (y, probas) in curves.items():
        label = "cross-validation" if part == "cv" else "evaluation"
        plot_calibration(out_dir / f"calibration_{part}.png", y, probas, f"Calibration, {label}")
        confusions = {n: m[part]["confusion"] for n, m in results["models"].items() if part in m}
        plot_confusions(out_dir / f"confusion_{part}.png", confusions, f"Confusion, {label}")
        plots += [out_dir / f"calibration_{part}.png", out_dir / f"confusion_{part}.png"]
    gallery = plot_gallery(out_dir, examples) if examples else []
    results["worst_cases"] = [{k: (str(v) if k == "png" else v) for k, v in e.items()}
                              for e in gallery]
    tables = _tables(results)
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out_dir / "report.md",
                       _markdown(results, tables, plots, glance, gallery).encode())
    atomic_write_bytes(out_dir / "report.html",
                       _html(results, tables, plots, glance, gallery).encode())


def write_predictions(path, index, probas, fold=None, labels=None):
    """One row per image of ``index``: path, its true label (`TRUE_LABEL`:
    ``labels`` when given, e.g. 0/1/2 for three classes, else ``index.labels``,
    0 NORMAL, 1 PNEUMONIA), patient, fold (if given) and each model's calibrated
    probability (``probas``: {model: array})."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", TRUE_LABEL, "patient"] + (["fold"] if fold is not None else [])
                    + list(probas))
    labels = index.labels if labels is None else labels
    for i, (image, label, patient) in enumerate(zip(index.paths, labels, index.groups)):
        writer.writerow([image, int(label), patient] + ([int(fold[i])] if fold is not None else [])
                        + [repr(float(p[i])) for p in probas.values()])
    atomic_write_bytes(Path(path), buffer.getvalue().encode())


def read_predictions(path):
    """A `write_predictions` table back: ``(paths, true labels, patients,
    {model: probabilities})``; tables written before the ground-truth column was
    renamed (``label``) read the same."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    models = [c for c in rows[0] if c not in ("path", TRUE_LABEL, "label", "patient", "fold")]
    return ([r["path"] for r in rows],
            np.array([int(r.get(TRUE_LABEL, r.get("label"))) for r in rows]),
            np.array([r["patient"] for r in rows]),
            {m: np.array([float(r[m]) for r in rows]) for m in models})


_LOOK_HEADER = ("| when (UTC) | config | CV AUC | CV acc | CV sens | CV spec | threshold "
                "| site AUC | site acc | site sens | site spec |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|\n")


def log_look(log, name, cv, evaluation, record=None):
    """Append one look at an evaluation set to a markdown log, as one table row.

    Every score of a held-out set is a look that can steer later choices, so each
    is written down with the cross-validated figures it was chosen by.

    Parameters
    ----------
    log : path-like
        The log file, created with its folder when missing. A new table opens
        when the file does not end in one.
    name : str
        The configuration looked at.
    cv : dict
        Its cross-validated ``auc``, ``accuracy``, ``sensitivity``,
        ``specificity`` and the ``threshold`` chosen on them.
    evaluation : dict
        ``auc``, ``accuracy``, ``sensitivity`` and ``specificity`` on the
        evaluation set, at that threshold.
    record : str, optional
        The tracked log the row belongs in, when ``log`` is a scratch file: the
        row is then printed with a line asking to add it there.

    Returns
    -------
    str
        The row written, without its newline.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    text = log.read_text() if log.exists() else ""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    row = (f"| {when} | {name} | {cv['auc']:.4f} | {cv['accuracy']:.3f} | "
           f"{cv['sensitivity']:.3f} | {cv['specificity']:.3f} | {cv['threshold']:.3f} | "
           f"{evaluation['auc']:.4f} | {evaluation['accuracy']:.3f} | "
           f"{evaluation['sensitivity']:.3f} | {evaluation['specificity']:.3f} |")
    with open(log, "a") as handle:
        if not text:
            handle.write("# Looks at an evaluation set\n\nOne row per look.\n")
        lines = text.rstrip().splitlines()
        if not lines or not lines[-1].startswith("|"):  # prose last: open a new table
            handle.write("\n" + _LOOK_HEADER)
        handle.write(row + "\n")
    if record is not None:
        print(f"look logged in {log}; add it to {record}:\n{row}", flush=True)
    return row
