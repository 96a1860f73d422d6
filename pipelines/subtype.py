"""Three-class comparison (NORMAL / BACTERIAL / VIRAL): ``python -m pipelines.run --task subtype``.

Example::

    python -m pipelines.run --task subtype --features hog,cnn,hog+cnn --eval-dir ../shared/data/kermany/site_val

The same features, training copies and heads as the binary run, multi-class
(`pipelines.multiclass`), on patient-grouped folds stratified on the three
classes. Calibration (temperature scaling) and the decision rule's thresholds
come from out-of-fold training predictions only; a model is selected on the
CV bacterial-vs-viral AUC alone. Each model is refitted on all the training
images and saved like the binary models.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from xray_features.dataset import SUBTYPES, fold_of, index_dataset, make_folds
from xray_features.preprocess import default_preprocessor

from . import multiclass
from .assemble import (extract_features, extract_training_copies,
                       parse_feature_sets)
from .metrics import auc
from .multiclass import (MultiClassDecision, decide, make_multiclass_head, pneumonia_proba,
                         subtype_proba)
from .persist import atomic_write_bytes, save_model
from .report import (_SHOWN, _fmt, _html, _markdown, _metric_rows, _save, environment,
                     plot_roc, plt, write_predictions)
from .comparison import (PROBE, cached_fit, final_pipeline, library_versions,
                         load_training_index, model_metadata, model_specs, stack_views,
                         training_augment)
from .logs import ensure_handler, get_logger, progress_enabled
from .selection import compare, evaluate, select_model

__all__ = ["CLASSES", "KERMANY_2018", "fit_multiclass", "three_class_metrics", "run_subtype",
           "write_subtype_report", "plot_confusions3"]

_log = get_logger("subtype")
CLASSES = tuple(SUBTYPES)  # NORMAL, BACTERIAL, VIRAL: the column order everywhere
# Kermany et al. 2018 (Cell 172:1122), bacterial vs viral on the official test split
KERMANY_2018 = {"accuracy": 0.907, "sensitivity": 0.886, "specificity": 0.909}


def fit_multiclass(head, folds, X, y, augment, versions, threshold_rule, n_jobs=None):
    """`MultiClassDecision` over ``head`` fitted on ``X, y`` (class names,
    `CLASSES`) and ``augment``, its NORMAL-vs-PNEUMONIA threshold chosen by
    ``threshold_rule``: a plain function, cached by `joblib.Memory` like
    `pipelines.comparison.fit_decision` (``versions`` is only part of the key)."""
    clf = MultiClassDecision(head, cv=folds, classes=CLASSES, threshold_rule=threshold_rule,
                             n_jobs=n_jobs)
    return clf.fit(X, y, **augment)


def subtype_versions():
    """`pipelines.comparison.library_versions` and the source of `pipelines.multiclass`."""
    code = inspect.getsource(multiclass).encode()
    return {**library_versions(), "multiclass_sha256": hashlib.sha256(code).hexdigest()}


def three_class_metrics(codes, proba, groups, threshold, subtype_threshold, n_boot=1000, seed=0,
                        decision="thresholds"):
    """The figures of three-class probabilities ``proba`` against class indices ``codes``.

    ``auc_per_class`` (one vs rest) and their mean ``macro_auc``; the 3x3
    ``confusion`` (rows truth, columns prediction, in `CLASSES` order) and
    ``accuracy`` of `multiclass.decide`; ``normal_vs_pneumonia``: P(pneumonia)
    at ``threshold``; ``bacterial_vs_viral``: among the pneumonia images,
    P(viral | pneumonia) at ``subtype_threshold`` (sensitivity is for VIRAL,
    specificity for BACTERIAL). Both binary entries are `selection.evaluate`'s
    (with patient-bootstrap CIs). Under ``decision="argmax"``, only the
    three-class figures and the bacterial-vs-viral ones at 0.5 (the argmax
    between the two) are given.
    """
    codes, proba, groups = np.asarray(codes), np.asarray(proba), np.asarray(groups)
    predicted = decide(proba, threshold, subtype_threshold, decision)
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (codes, predicted), 1)
    per_class = {name: auc(codes == k, proba[:, k]) for k, name in enumerate(CLASSES)}
    out = {"macro_auc": float(np.mean(list(per_class.values()))), "auc_per_class": per_class,
           "accuracy": float(np.mean(predicted == codes)), "n": int(len(codes)),
           "confusion": confusion.tolist()}
    pneumonia = codes != 0
    if decision == "argmax":
        subtype_threshold = 0.5
    else:
        out["normal_vs_pneumonia"] = evaluate(pneumonia, pneumonia_proba(proba), groups,
                                              threshold, n_boot, seed)
    out["bacterial_vs_viral"] = evaluate(codes[pneumonia] == 2, subtype_proba(proba[pneumonia]),
                                         groups[pneumonia], subtype_threshold, n_boot, seed)
    return out


def _known_subtypes(index, what, left_out):
    """``index`` without the images whose subtype cannot be told; those are
    named in ``left_out[what]`` and in a warning with their count."""
    unknown = index.unknown_subtypes
    if unknown:
        left_out[what] = unknown
        shown = ", ".join(os.path.basename(p) for p in unknown[:5])
        print(f"warning: {what}: {len(unknown)} images whose subtype cannot be told are left "
              f"out ({shown}{', …' if len(unknown) > 5 else ''})", file=sys.stderr)
    return index.take(np.flatnonzero(index.subtype_labels >= 0))


def _check_args(args):
    """A clear error line for what the three-class run cannot do, or None."""
    if args.tta:
        return "--tta is not supported with --task subtype"
    if not Path(args.data).is_dir():
        return f"training data not found at {args.data!r}. Pass --data DIR or set XRAY_DATA."
    if args.eval_dir and not Path(args.eval_dir).is_dir():
        return f"--eval-dir {args.eval_dir!r} is not a folder"
    try:
        parse_feature_sets(args.features)
        for head in _heads(args):
            make_multiclass_head(head)
    except ValueError as exc:
        return str(exc)
    return None


def _heads(args):
    return [h.strip() for h in args.heads.split(",") if h.strip()]


def run_subtype(args, argv=None):
    """`pipelines.run`'s ``--task subtype``: ``args`` are its parsed arguments."""
    started = time.perf_counter()
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    feature_sets, heads = parse_feature_sets(args.features), _heads(args)
    cache_dir = None if args.cache_dir.lower() == "none" else args.cache_dir
    progress, out = progress_enabled(args.quiet), Path(args.out)
    ensure_handler()
    log = (lambda *a: None) if args.quiet else (lambda *a: _log.info(" ".join(map(str, a))))

    left_out = {}
    train = _known_subtypes(load_training_index(args.data, args.limit, args.seed), "training",
                            left_out)
    codes, groups = train.subtype_labels, train.groups
    y = np.array(CLASSES, dtype=object)[codes]
    folds = make_folds(codes, groups, n_splits=args.cv, seed=args.seed)
    counts = train.subtype_counts()
    log(f"training images: {counts['NORMAL']} NORMAL, {counts['BACTERIAL']} BACTERIAL, "
        f"{counts['VIRAL']} VIRAL; {len(set(groups))} patients")

    extractors = sorted({name for fs in feature_sets for name in fs.split("+")} | {"cnn"})
    preprocessor = default_preprocessor(crop=args.lung_crop)
    extract = extract_features
    if args.dask:
        from .dask_scoring import extract_features_on_dask
        extract = partial(extract_features_on_dask, scheduler=args.dask)
    options = {"n_jobs": args.n_jobs, "progress": progress, "preprocessor": preprocessor}
    features = extract(train.paths, extractors, cache_dir, **options)
    # counter-squash takes the binary label: BACTERIAL and VIRAL copies go the PNEUMONIA way
    copies = extract_training_copies(args.augment, train.paths, train.labels, extractors,
                                     cache_dir, random_state=args.seed, extract=extract, **options)
    eval_index = None
    if args.eval_dir:
        eval_index = _known_subtypes(index_dataset(args.eval_dir), "evaluation", left_out)
        eval_features = extract(eval_index.paths, extractors, cache_dir, **options)

    fit, versions = cached_fit(fit_multiclass, cache_dir), subtype_versions()
    specs = model_specs(feature_sets, heads)
    models, curves_cv, curves_eval = {}, {}, {}
    for name, fs, head in specs:
        log(f"fitting {name} ({args.cv}-fold CV + final fit, three classes)")
        augment = training_augment(fs, copies, y)
        fit_args = (make_multiclass_head(head, args.seed), folds, stack_views(fs, [features]), y,
                    augment, versions, args.threshold_rule)
        if fit is not fit_multiclass and fit.check_call_in_cache(*fit_args):
            log("  fitted models found in the cache")
        clf = fit(*fit_args, n_jobs=args.n_jobs)
        thresholds = (clf.threshold_, clf.subtype_threshold_)
        result = {"features": fs, "head": head, "threshold": clf.threshold_,
                  "subtype_threshold": clf.subtype_threshold_,
                  "temperature": clf.calibrator_.temperature_,
                  "cv": three_class_metrics(codes, clf.oof_proba_, groups, *thresholds,
                                            args.n_boot, args.seed),
                  "cv_argmax": three_class_metrics(codes, clf.oof_proba_, groups, *thresholds,
                                                   args.n_boot, args.seed, "argmax")}
        curves_cv[name] = clf.oof_proba_
        if eval_index is not None:
            curves_eval[name] = clf.predict_proba(stack_views(fs, [eval_features]))
            result["eval"] = three_class_metrics(eval_index.subtype_labels, curves_eval[name],
                                                 eval_index.groups, *thresholds, args.n_boot,
                                                 args.seed)
        models[name] = result
        if not args.no_save and not name.startswith("baseline/"):
            metadata = model_metadata(fs, head, clf, args, result, train, task="subtype",
                                      classes=list(CLASSES), decision=clf.decision,
                                      subtype_threshold=clf.subtype_threshold_, tta=False)
            save_model(final_pipeline(fs, clf, preprocessor, args.n_jobs),
                       out / "models" / f"{fs.replace('+', '_')}-{head}.joblib", metadata)

    # selection and comparisons: P(viral | pneumonia) among the pneumonia images
    bv = {"cv": _bacterial_vs_viral(codes, groups, curves_cv)}
    if eval_index is not None:
        bv["eval"] = _bacterial_vs_viral(eval_index.subtype_labels, eval_index.groups, curves_eval)
    candidates = {n: {"features": m["features"], "cv": {"auc": m["cv"]["bacterial_vs_viral"]["auc"]}}
                  for n, m in models.items()}
    y_bv, g_bv, p_bv = bv["cv"]
    selected, selection_tests = select_model(candidates, p_bv, y_bv, g_bv, args.n_boot,
                                             args.seed, args.selection_margin)
    # a paired test needs both subtypes (a set without viral images has no bacterial-vs-viral AUC)
    comparisons = {name: {part: compare(y_, p_[name], p_[PROBE], g_, args.n_boot, args.seed)
                          for part, (y_, g_, p_) in bv.items() if 0 < y_.sum() < len(y_)}
                   for name in models if name != PROBE}
    results = {
        "command": "python -m pipelines.run " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "task": "subtype", "classes": list(CLASSES), "data": str(args.data),
        "eval_dir": args.eval_dir, "n_train": len(train), "train_counts": counts,
        "eval_counts": eval_index.subtype_counts() if eval_index is not None else None,
        "unknown_subtype_left_out": left_out,
        "cv_folds": args.cv, "seed": args.seed,
        "threshold_rule": f"{args.threshold_rule} (P(pneumonia)), then youden "
                          "(P(viral | pneumonia))",
        "decision": "thresholds", "augment": args.augment, "tta": False, "baseline": PROBE,
        "selected": selected, "selection_figure": "cv bacterial_vs_viral auc",
        "selection_tests": selection_tests, "comparisons": comparisons,
        "kermany_2018": KERMANY_2018, "models": models,
    }
    results["summary"] = _summary(results, args.selection_margin)
    results["per_fold"] = [{"model": name, "bacterial_vs_viral_auc": [
        auc(codes[t][codes[t] != 0] == 2, subtype_proba(p[t][codes[t] != 0])) for _, t in folds]}
        for name, p in curves_cv.items()]
    curves = {"cv": (codes, curves_cv)}
    if eval_index is not None:
        curves["eval"] = (eval_index.subtype_labels, curves_eval)
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_subtype_report(out, results, curves)
    write_predictions(out / "predictions_cv.csv", train, _columns(curves_cv),
                      fold=fold_of(folds, len(y)), labels=train.subtype_labels)
    if eval_index is not None:
        write_predictions(out / "predictions_eval.csv", eval_index, _columns(curves_eval),
                          labels=eval_index.subtype_labels)
    print(_console_table(models))
    print(results["summary"])
    print(f"report: {out / 'report.html'}  ({results['wall_time_s']} s)")
    return 0


def _bacterial_vs_viral(codes, groups, curves):
    """``(is_viral, groups, {model: P(viral | pneumonia)})`` over the pneumonia images."""
    pneumonia = np.asarray(codes) != 0
    return (np.asarray(codes)[pneumonia] == 2, np.asarray(groups)[pneumonia],
            {name: subtype_proba(p[pneumonia]) for name, p in curves.items()})


def _columns(curves):
    """``{model: (n, 3) probabilities}`` as one CSV column per model and class."""
    return {f"{name}:p_{cls.lower()}": p[:, k] for name, p in curves.items()
            for k, cls in enumerate(CLASSES)}


def _summary(results, margin):
    models, selected = results["models"], results["selected"]
    cv = models[selected]["cv"]["bacterial_vs_viral"]
    text = (f"Selected as the simplest model whose CV bacterial-vs-viral AUC is within {margin} "
            f"of the best's (non-inferiority, patient-level paired bootstrap; without looking at "
            f"the evaluation set): {selected}, CV bacterial-vs-viral AUC {cv['auc']:.3f} vs "
            f"{models[PROBE]['cv']['bacterial_vs_viral']['auc']:.3f} for {PROBE} "
            f"({results['comparisons'][selected]['cv']['verdict']}); accuracy {cv['accuracy']:.3f}, "
            f"sensitivity (viral) {cv['sensitivity']:.3f}, specificity {cv['specificity']:.3f} "
            f"(Kermany et al. 2018, test split: {KERMANY_2018['accuracy']}, "
            f"{KERMANY_2018['sensitivity']}, {KERMANY_2018['specificity']}).")
    if "eval" in models[selected]:
        ev = models[selected]["eval"]["bacterial_vs_viral"]
        binary = models[selected]["eval"]["normal_vs_pneumonia"]
        text += (f" On the evaluation set: bacterial vs viral AUC {ev['auc']:.3f}, accuracy "
                 f"{ev['accuracy']:.3f}, sensitivity {ev['sensitivity']:.3f}, specificity "
                 f"{ev['specificity']:.3f} (n = {ev['n']}); NORMAL vs PNEUMONIA AUC "
                 f"{binary['auc']:.3f}, sensitivity {binary['sensitivity']:.3f}, specificity "
                 f"{binary['specificity']:.3f}.")
    return text


def plot_confusions3(path, confusions, title):
    """One 3x3 confusion matrix (rows truth, columns prediction) per model."""
    names = list(confusions)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    short = [c[:4] + "." for c in CLASSES]
    for ax, name in zip(axes.flat, names):
        matrix = np.asarray(confusions[name])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > matrix.max() / 2 else "black")
        ax.set_xticks(range(3), short, fontsize=7)
        ax.set_yticks(range(3), short, fontsize=7)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title + " (rows: truth, columns: prediction)", fontsize=9)
    _save(fig, path)


def _three_class_rows(models, part):
    """Per model: macro and per-class AUC, accuracy (and, in CV, the argmax rule's), n."""
    return [[name, _fmt(m[part]["macro_auc"])]
            + [_fmt(m[part]["auc_per_class"][c]) for c in CLASSES] + [_fmt(m[part]["accuracy"])]
            + ([_fmt(m["cv_argmax"]["accuracy"])] if part == "cv" else []) + [str(m[part]["n"])]
            for name, m in models.items() if part in m]


def _tables(results):
    models = results["models"]
    header = ["model", *_SHOWN, "threshold", "n"]
    kermany = ["Kermany et al. 2018 (official test split, a CNN)", "–",
               *(f"{KERMANY_2018[k]:.3f}" for k in ("accuracy", "sensitivity", "specificity")),
               "–", "–", "–", "–"]
    parts = [("cv", "Cross-validation (out-of-fold, patient-grouped)")]
    if any("eval" in m for m in models.values()):
        parts.append(("eval", f"Evaluation on {results['eval_dir']}"))
    tables = []
    for part, label in parts:
        tables.append((f"{label}: three classes (one-vs-rest AUC; accuracy of the decision rule)",
                       ["model", "macro AUC", *(f"AUC {c}" for c in CLASSES), "accuracy",
                        *(["accuracy, argmax rule"] if part == "cv" else []), "n"],
                       _three_class_rows(models, part)))
        entries = {n: {part: m[part]["bacterial_vs_viral"]} for n, m in models.items() if part in m}
        tables.append((f"{label}: bacterial vs viral among the pneumonia images "
                       "(sensitivity: VIRAL, specificity: BACTERIAL)", header,
                       _metric_rows(entries, part) + [kermany]))
        entries = {n: {part: m[part]["normal_vs_pneumonia"]} for n, m in models.items()
                   if part in m}
        tables.append((f"{label}: NORMAL vs PNEUMONIA of the three-class models (P(pneumonia) "
                       "= 1 - P(normal))", header, _metric_rows(entries, part)))
    argmax = {n: {"cv": m["cv_argmax"]["bacterial_vs_viral"]} for n, m in models.items()}
    tables.append(("Cross-validation, bacterial vs viral under the argmax rule (threshold 0.5 "
                   "on P(viral | pneumonia)), for comparison with the rule used", header,
                   _metric_rows(argmax, "cv")))
    rows = [[name, part, f"{c['diff']:+.4f}", f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]",
             f"{c['delong_p']:.3g}", c["verdict"]]
            for name, by_part in results["comparisons"].items() for part, c in by_part.items()]
    tables.append((f"Bacterial-vs-viral AUC, paired with {results['baseline']}", [
        "model", "data", "ΔAUC", "95% CI (patient bootstrap)", "DeLong p", "verdict"], rows))
    folds = results["per_fold"]
    tables.append(("Per fold: bacterial-vs-viral AUC at each fold's held-out patients",
                   ["model"] + [f"fold {k}" for k in range(len(folds[0]["bacterial_vs_viral_auc"]))],
                   [[f["model"]] + [_fmt(v) for v in f["bacterial_vs_viral_auc"]] for f in folds]))
    return tables


def write_subtype_report(out_dir, results, curves):
    """metrics.json, report.md, report.html and the PNG plots beside them.

    ``curves`` maps ``"cv"`` / ``"eval"`` to ``(class indices, {model: (n, 3)
    probabilities})``. Plots: one-vs-rest ROC per class, bacterial-vs-viral
    ROC among the pneumonia images, and the 3x3 confusion matrices.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for part, (codes, probas) in curves.items():
        label = "cross-validation" if part == "cv" else "evaluation"
        for k, cls in enumerate(CLASSES):
            path = out_dir / f"roc_{part}_{cls.lower()}.png"
            plot_roc(path, codes == k, {n: p[:, k] for n, p in probas.items()},
                     f"ROC, {cls} vs the rest, {label}", results["baseline"])
            plots.append(path)
        is_viral, _, p_viral = _bacterial_vs_viral(codes, np.zeros(len(codes)), probas)
        path = out_dir / f"roc_{part}_bacterial_vs_viral.png"
        plot_roc(path, is_viral, p_viral, f"ROC, VIRAL vs BACTERIAL (pneumonia images), {label}",
                 results["baseline"])
        path_c = out_dir / f"confusion_{part}.png"
        plot_confusions3(path_c, {n: m[part]["confusion"] for n, m in results["models"].items()
                                  if part in m}, f"Confusion, {label}")
        plots += [path, path_c]
    tables = _tables(results)
    results.setdefault("environment", environment())
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out_dir / "report.md", _markdown(results, tables, plots).encode())
    atomic_write_bytes(out_dir / "report.html", _html(results, tables, plots).encode())


def _console_table(models):
    width = max([len("model")] + [len(name) for name in models])
    keys = ("auc", "accuracy", "sensitivity", "specificity")
    lines = [f"{'model':<{width}} {'CV mAUC':>7} {'CV b/v AUC':>10} {'CV b/v acc':>10} "
             f"{'ev b/v AUC':>10} {'ev b/v acc':>10} {'ev sens':>10} {'ev spec':>10} "
             f"{'ev N/P AUC':>10}"]
    for name, m in models.items():
        cv, ev = m["cv"]["bacterial_vs_viral"], m.get("eval", {})
        cells = [ev["bacterial_vs_viral"][k] for k in keys] if ev else [None] * 4
        cells.append(ev["normal_vs_pneumonia"]["auc"] if ev else None)
        lines.append(f"{name:<{width}} {m['cv']['macro_auc']:7.3f} {cv['auc']:10.3f} "
                     f"{cv['accuracy']:10.3f} "
                     + " ".join(f"{c:10.3f}" if c is not None else f"{'–':>10}" for c in cells))
    return "\n".join(lines)
