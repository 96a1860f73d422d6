"""Write a comparison report: metrics.json, report.md, report.html, plots and
per-image predictions."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from .persist import atomic_write_bytes  # noqa: E402

__all__ = ["write_report", "write_predictions", "plot_roc", "plot_confusions", "plot_calibration"]

_SHOWN = ("auc", "accuracy", "sensitivity", "specificity", "f1", "brier")


def curve_colours(n):
    """``n`` distinct colours: tab10's, or tab20's when more curves share a plot."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_roc(path, y, probas, title, reference=None):
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for (name, p), colour in zip(probas.items(), curve_colours(len(probas))):
        fpr, tpr, _ = roc_curve(y, p)
        style = "--" if name == reference or name.startswith("baseline/") else "-"
        ax.plot(fpr, tpr, style, color=colour, lw=1.5, label=f"{name}")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_confusions(path, confusions, title):
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


def _markdown(results, tables, plots):
    lines = ["# xray-hybrid comparison report", "", f"Command: `{results['command']}`", "",
             _setup(results), "", results["summary"], ""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines.append("## Plots")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _html(results, tables, plots):
    parts = ["<!doctype html><meta charset='utf-8'><title>xray-hybrid report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
             "padding:3px 6px}</style>",
             "<h1>xray-hybrid comparison report</h1>",
             f"<p>Command: <code>{html.escape(results['command'])}</code></p>",
             f"<p>{html.escape(_setup(results))}</p>",
             f"<p>{html.escape(results['summary'])}</p>"]
    for title, header, rows in tables:
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                  for row in rows]
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<p><img alt='{plot.stem}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(parts)


def write_report(out_dir, results, curves):
    """Write everything into ``out_dir``.

    ``results`` is the metrics.json content; ``curves`` maps ``"cv"`` / ``"eval"``
    to ``(y, {model: probabilities})`` for the plots.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for part, (y, probas) in curves.items():
        label = "cross-validation" if part == "cv" else "evaluation"
        plot_roc(out_dir / f"roc_{part}.png", y, probas, f"ROC, {label}", results.get("baseline"))
        plot_calibration(out_dir / f"calibration_{part}.png", y, probas, f"Calibration, {label}")
        confusions = {n: m[part]["confusion"] for n, m in results["models"].items() if part in m}
        plot_confusions(out_dir / f"confusion_{part}.png", confusions, f"Confusion, {label}")
        plots += [out_dir / f"roc_{part}.png", out_dir / f"confusion_{part}.png",
                  out_dir / f"calibration_{part}.png"]
    tables = _tables(results)
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out_dir / "report.md", _markdown(results, tables, plots).encode())
    atomic_write_bytes(out_dir / "report.html", _html(results, tables, plots).encode())


def write_predictions(path, index, probas, fold=None):
    """One row per image of ``index``: path, label, patient, fold (if given) and
    each model's calibrated probability (``probas``: {model: array})."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "patient"] + (["fold"] if fold is not None else [])
                    + list(probas))
    for i, (image, label, patient) in enumerate(zip(index.paths, index.labels, index.groups)):
        writer.writerow([image, int(label), patient] + ([int(fold[i])] if fold is not None else [])
                        + [repr(float(p[i])) for p in probas.values()])
    atomic_write_bytes(Path(path), buffer.getvalue().encode())
