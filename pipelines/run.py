"""Cross-validated comparison of feature sets and heads against pure-CNN baselines.

Example::

    python -m pipelines.run --features hog,cnn,hog+cnn --eval-dir ../shared/data/kermany/site_val

Every model is scored on the same patient-grouped, label-stratified folds
(`xray_features.dataset.make_folds`). Its threshold and calibration come from
out-of-fold training predictions only. Each model is then refitted on all of
the training images and saved to ``<out>/models/<features>-<head>.joblib``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from joblib import Memory
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from xray_features import ReadImages
from xray_features.cnn import MODELS_DIR
from xray_features.dataset import fold_of, index_dataset, make_folds
from xray_features.preprocess import default_preprocessor
from xray_features.views import ViewFeatures, view_preprocessor, zoom_views

from .assemble import (AUGMENTATIONS, DEFAULT_AUGMENT, HEADS, extract_features,
                       extract_training_copies, make_cnn_pipeline, make_feature_union, make_head,
                       parse_feature_sets)
from .baselines import finetuned_baselines
from .decision import DecisionClassifier
from .metrics import DEFAULT_THRESHOLD_RULE, auc, binary_metrics
from .persist import save_model
from .report import write_predictions, write_report
from .logs import ensure_handler, get_logger, progress_enabled
from .selection import (RELIANCE_MARGIN, SELECTION_MARGIN, compare, evaluate, feature_passes,
                        native_aspect_ratios, select_model, shortcut_reliance)

PROBE = "baseline/cnn-probe"
_log = get_logger("run")


def default_data_dir():
    """``$XRAY_DATA``, else ``./data/chest_xray``."""
    return os.environ.get("XRAY_DATA") or "./data/chest_xray"


def default_cache_dir():
    """``$XDG_CACHE_HOME/xray-hybrid``, else ``~/.cache/xray-hybrid``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xray-hybrid")


def build_parser():
    """The argument parser of ``python -m pipelines.run``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run",
        description=__doc__.split("\n\n")[0] + " Writes metrics.json, report.md, "
        "report.html, ROC / confusion / calibration plots, per-image predictions "
        "(predictions_cv.csv, out of fold; predictions_eval.csv) and the fitted models to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--task", choices=("pneumonia", "subtype"), default="pneumonia",
                        help="'pneumonia': NORMAL vs PNEUMONIA; 'subtype': three classes, NORMAL "
                        "/ BACTERIAL / VIRAL (pipelines/subtype.py)")
    parser.add_argument("--features", default="hog,cnn,hog+cnn",
                        help="comma-separated feature sets; each is '+'-joined extractors "
                        "from hog, lbp, cnn, cnn160 (the CNN at 160 px, a faster path) "
                        "(e.g. hog,cnn,hog+cnn)")
    parser.add_argument("--heads", default="xgb,logreg",
                        help=f"comma-separated heads from {', '.join(HEADS)}")
    parser.add_argument("--data", default=default_data_dir(),
                        help="training data: a Kaggle-layout root (its train/ split is used) "
                        "or a flat <root>/<LABEL>/ folder; default $XRAY_DATA, else "
                        "./data/chest_xray")
    parser.add_argument("--eval-dir", default=None,
                        help="a labelled folder (<dir>/NORMAL, <dir>/PNEUMONIA) scored by the "
                        "models fitted on all of the training data; never used for fitting")
    parser.add_argument("--cv", type=int, default=5, help="number of patient-grouped folds")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the folds, the heads and the zoom copies")
    parser.add_argument("--limit", type=int, default=None,
                        help="use a stratified, patient-grouped subsample of about N images")
    parser.add_argument("--threshold-rule", default=DEFAULT_THRESHOLD_RULE,
                        help="how the threshold is chosen from out-of-fold predictions: "
                        "'sensitivity:T' (the highest threshold keeping that share of "
                        "PNEUMONIA films called PNEUMONIA; docs/results.md, 'The operating point'), "
                        "'youden' or a number")
    parser.add_argument("--lung-crop", action="store_true",
                        help="add LungCrop to the preprocessing (off by default: it lowered "
                        "site_val AUC, see experiments/site_val_log.md)")
    parser.add_argument("--augment", choices=AUGMENTATIONS, default=DEFAULT_AUGMENT,
                        help="training-time copies of each training image: 'counter-squash', "
                        "squashed like the other class (the train images were squashed from "
                        "originals whose shape differs by class; experiments/aspect_study.py), "
                        "and 'zoom', zoomed in by its own random amount, up to 10%% off every "
                        "side (framing differs between sites; experiments/image_study.py); "
                        "copies never enter a test fold")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: score each image with its zoom-ins (5%% "
                        "and 10%% off every side), mean logit; calibration and threshold come "
                        "from out-of-fold scores made the same way. Off by default: it lowered "
                        "CV AUC slightly though it raised site_val AUC (experiments/"
                        "image_study.py), and it triples the scoring time")
    parser.add_argument("--out", default="runs/latest", help="output folder")
    parser.add_argument("--cache-dir", default=default_cache_dir(),
                        help="cache folder for features and fitted models: a rerun with "
                        "the same data and settings reuses both ('none' disables it)")
    parser.add_argument("--n-jobs", type=int, default=-1,
                        help="parallel jobs for feature extraction and for the fold fits "
                        "(-1: all cores)")
    parser.add_argument("--selection-margin", type=float, default=SELECTION_MARGIN,
                        help="the selected model is the simplest whose CV AUC is within this "
                        "of the best's (upper end of the 95%% CI of the paired difference)")
    parser.add_argument("--n-boot", type=int, default=1000,
                        help="bootstrap replicates for confidence intervals")
    parser.add_argument("--dask", default=None, metavar="SCHEDULER",
                        help="extract features on a Dask cluster: 'local' (a LocalCluster) or "
                        "an address such as tcp://host:8786; images and --cache-dir must be "
                        "at the same paths on every worker (needs the dask extra)")
    parser.add_argument("--no-save", action="store_true", help="do not save fitted models")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def fit_decision(head, folds, X, y, augment, versions, n_jobs=None, n_views=1):
    """`DecisionClassifier` over the unfitted estimator ``head``, fitted on
    ``X, y`` (and ``augment``; ``X`` holds ``n_views`` blocks of view features),
    with the default threshold rule (the caller re-chooses the threshold).

    A plain function so that `joblib.Memory` can cache it: a rerun with the
    same head (and its parameters), features, labels, folds and settings loads
    the fitted models instead of refitting them, whatever its threshold rule.
    ``versions`` (package and library versions) is only part of the cache key;
    ``n_jobs`` is not.
    """
    clf = DecisionClassifier(head, cv=folds, n_jobs=n_jobs, n_views=n_views)
    return clf.fit(X, y, **augment)


def cached_fit(function, cache_dir):
    """``function`` behind `joblib.Memory` under ``<cache_dir>/fits`` (its
    ``n_jobs`` left out of the key), or as it is when ``cache_dir`` is None."""
    if cache_dir is None:
        return function
    return Memory(os.path.join(cache_dir, "fits"), verbose=0).cache(function, ignore=["n_jobs"])


def model_specs(feature_sets, heads):
    """``(name, feature set, head)`` of every model a comparison fits: each
    feature set with each head, then the pure-CNN probe."""
    return [(f"{fs}/{head}", fs, head) for fs in feature_sets for head in heads] + [
        (PROBE, "cnn", "logreg")]


def library_versions():
    """What a cached fit depends on besides its arguments: library versions and
    the source of the modules that fit (`decision`) and threshold (`metrics`)."""
    import inspect

    import sklearn

    from xray_features import __version__

    from . import decision, metrics
    try:  # the xgb extra: a run with logistic heads only does without it
        import xgboost
    except ImportError:
        xgboost = None
    code = "".join(inspect.getsource(module) for module in (decision, metrics))
    return {"xray_features": __version__, "sklearn": sklearn.__version__,
            "xgboost": getattr(xgboost, "__version__", None), "numpy": np.__version__,
            "fit_code_sha256": hashlib.sha256(code.encode()).hexdigest()}


def load_training_index(data_dir, limit=None, seed=0):
    """The training images of ``data_dir`` (its ``train/`` split when there is one), or a
    patient-grouped, label-stratified subsample of about ``limit`` of them."""
    index = index_dataset(data_dir)
    if "train" in index.splits:
        index = index.subset("train")
    if limit and limit < len(index):
        n_splits = max(2, round(len(index) / limit))
        _, keep = make_folds(index.labels, index.groups, n_splits=n_splits, seed=seed)[0]
        index = index.take(keep)
    return index


def model_metadata(feature_set, head, classifier, args, result, train, **overrides):
    """What a saved model records of how it was made (``pipelines.score`` and
    the model card read it); ``overrides`` replace the run's settings."""
    return {"feature_set": feature_set, "head": head, "threshold": classifier.threshold_,
            "threshold_rule": args.threshold_rule, "cv": result["cv"],
            "training_manifest_sha256": manifest_hash(train),
            "n_training_images": len(train), "seed": args.seed,
            "lung_crop": args.lung_crop, "augment": args.augment, "tta": args.tta, **overrides}


def manifest_hash(index):
    """sha256 of the sorted (relative path, label) lines of ``index``: what a
    saved model was trained on."""
    lines = sorted(f"{os.path.relpath(r.path, index.root)}\t{r.label}" for r in index.records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def main(argv=None):
    """Run the comparison on ``argv`` (see `build_parser`); returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.task == "subtype":
        from .subtype import run_subtype
        return run_subtype(args, argv)
    started = time.perf_counter()
    try:
        feature_sets = parse_feature_sets(args.features)
        heads = [h.strip() for h in args.heads.split(",") if h.strip()]
        for head in heads:
            make_head(head)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not Path(args.data).is_dir():
        print(f"error: training data not found at {args.data!r}. Pass --data DIR or set "
              "XRAY_DATA (a folder with train/NORMAL and train/PNEUMONIA).", file=sys.stderr)
        return 2
    if args.eval_dir and not Path(args.eval_dir).is_dir():
        print(f"error: --eval-dir {args.eval_dir!r} is not a folder", file=sys.stderr)
        return 2
    cache_dir = None if args.cache_dir.lower() == "none" else args.cache_dir
    progress = progress_enabled(args.quiet)
    out = Path(args.out)

    train = load_training_index(args.data, args.limit, args.seed)
    y, groups = train.labels, train.groups
    folds = make_folds(y, groups, n_splits=args.cv, seed=args.seed)
    ensure_handler()
    log = (lambda *a: None) if args.quiet else (lambda *a: _log.info(" ".join(map(str, a))))
    log(f"training images: {train.summary()}")

    extractors = sorted({name for fs in feature_sets for name in fs.split("+")} | {"cnn"})
    preprocessor = default_preprocessor(crop=args.lung_crop)
    extract = extract_features
    if args.dask:
        from .dask_scoring import extract_features_on_dask
        extract = partial(extract_features_on_dask, scheduler=args.dask)
    views = zoom_views() if args.tta else []
    view_chains = [preprocessor] + [view_preprocessor(view, preprocessor) for view in views]

    def extract_views(paths):
        """The features of ``paths`` and then of each test-time view: one dict per view."""
        return [extract(paths, extractors, cache_dir, n_jobs=args.n_jobs, progress=progress,
                        preprocessor=chain) for chain in view_chains]

    if views:
        log("training images and their test-time views")
    features = extract_views(train.paths)
    if AUGMENTATIONS[args.augment]:
        log(f"{args.augment} copies of the training images")
    copies = extract_training_copies(args.augment, train.paths, y, extractors, cache_dir,
                                     random_state=args.seed, preprocessor=preprocessor,
                                     n_jobs=args.n_jobs, progress=progress, extract=extract)
    eval_index = eval_features = None
    if args.eval_dir:
        eval_index = index_dataset(args.eval_dir)
        eval_features = extract_views(eval_index.paths)

    fit, versions = cached_fit(fit_decision, cache_dir), library_versions()
    specs = model_specs(feature_sets, heads)
    models, curves_cv, curves_eval, per_fold = {}, {}, {}, []
    finals = {}  # each deployable model's final pipeline, for the report's gallery

    def record(name, info, p_oof, p_eval, threshold):
        """Score one model's out-of-fold and evaluation predictions into the report."""
        result = {**info, "cv": evaluate(y, p_oof, groups, threshold, args.n_boot, args.seed),
                  "cv_at_0.5": binary_metrics(y, p_oof, 0.5)}
        curves_cv[name] = p_oof
        per_fold.append({"model": name, "auc": [auc(y[t], p_oof[t]) for _, t in folds]})
        if p_eval is not None:
            curves_eval[name] = p_eval
            result["eval"] = evaluate(eval_index.labels, p_eval, eval_index.groups, threshold,
                                      args.n_boot, args.seed)
            result["eval_at_0.5"] = binary_metrics(eval_index.labels, p_eval, 0.5)
        models[name] = result
        return result

    for name, fs, head in specs:
        log(f"fitting {name} ({args.cv}-fold CV + final fit)")
        X = _stack(fs, features)
        augment = training_augment(fs, copies, y)
        fit_args = (make_head(head, args.seed), folds, X, y, augment, versions)
        fit_kwargs = {"n_views": 1 + len(views)} if views else {}
        if fit is not fit_decision and fit.check_call_in_cache(*fit_args, **fit_kwargs):
            log("  fitted models found in the cache")
        clf = fit(*fit_args, n_jobs=args.n_jobs, **fit_kwargs).rethreshold(y, args.threshold_rule)
        p_eval = None
        if eval_index is not None:
            Xe = _stack(fs, eval_features)
            p_eval = clf.predict_proba(Xe)[:, 1]
        result = record(name, {"features": fs, "head": head}, clf.oof_proba_, p_eval,
                        clf.threshold_)
        if not name.startswith("baseline/"):
            finals[name] = pipeline = _final_pipeline(fs, clf, preprocessor, args.n_jobs, views)
        if not args.no_save and not name.startswith("baseline/"):
            save_model(pipeline, out / "models" / f"{fs.replace('+', '_')}-{head}.joblib",
                       model_metadata(fs, head, clf, args, result, train))

    for base in finetuned_baselines(train, folds, eval_index, threshold_rule=args.threshold_rule):
        name, network = base["name"], base["name"].split("/", 1)[1]
        info = {"features": "cnn-finetuned", "head": network,
                "deployable": base["model_path"] is not None}
        if base["model_path"] is None:  # predictions only: compared, never chosen
            log(f"baseline {name} (fine-tuned CNN, saved predictions only)")
            record(name, info, base["oof"], base["eval"], base["threshold"])
            continue
        log(f"baseline {name} (packaged fine-tuned CNN: calibrated and saved like the others)")
        pipeline = make_cnn_pipeline(base["model_path"].name, args.threshold_rule)
        clf = pipeline.steps[-1][1].fit(base["oof"][:, None].astype(np.float32), y,
                                        oof_proba=base["oof"], oof_fold=fold_of(folds, len(y)))
        p_eval = None if base["eval"] is None else clf.predict_proba(base["eval"][:, None])[:, 1]
        result = record(name, info, clf.oof_proba_, p_eval, clf.threshold_)
        finals[name] = pipeline
        if not args.no_save:
            preprocess = pipeline.named_steps["preprocess"]
            save_model(pipeline, out / "models" / f"cnn-{network}.joblib",
                       model_metadata(network, "score", clf, args, result, train,
                                      lung_crop=any(n == "crop" for n, _ in preprocess.steps),
                                      augment="its own training recipe (model card)",
                                      tta=False, network=base["model_path"].name))

    def paired(model, reference):
        """`compare` on the CV predictions, and on the evaluation set when both have it."""
        out = {"cv": compare(y, curves_cv[model], curves_cv[reference], groups,
                             args.n_boot, args.seed)}
        if model in curves_eval and reference in curves_eval:
            out["eval"] = compare(eval_index.labels, curves_eval[model], curves_eval[reference],
                                  eval_index.groups, args.n_boot, args.seed)
        return out

    comparisons = {name: paired(name, PROBE) for name in models if name != PROBE}
    selection = choose(models, curves_cv, train, args)
    selected = selection["selected"]
    # the hybrid the feature-set models alone would give, kept beside the choice
    hybrid = selection["best_feature_set_model"]
    against_baselines = {name: paired(selected, name) for name in models
                         if name.startswith("baseline/") and name != selected}
    hybrid_vs_baselines = {name: paired(hybrid, name) for name in models
                           if name.startswith("baseline/")}
    verdict = comparisons[selected]["cv"]["verdict"]
    summary = (f"Selected by the training-data rule (docs/results.md, 'How the default is chosen'; "
               f"without looking at the evaluation set): {selected}, CV AUC "
               f"{models[selected]['cv']['auc']:.3f} vs {models[PROBE]['cv']['auc']:.3f} for "
               f"{PROBE}: {verdict} (patient-level paired bootstrap, DeLong p = "
               f"{comparisons[selected]['cv']['delong_p']:.3g}).")
    if selected in curves_eval:
        ev = comparisons[selected]["eval"]
        summary += (f" On the evaluation set: AUC {models[selected]['eval']['auc']:.3f} vs "
                    f"{models[PROBE]['eval']['auc']:.3f}: {ev['verdict']} "
                    f"(DeLong p = {ev['delong_p']:.3g}).")
    if hybrid != selected:
        summary += f" The best feature-set model by the same rule is {hybrid}."
    results = {
        "command": "python -m pipelines.run " + " ".join(shlex.quote(a) for a in
                                                          (argv if argv is not None else sys.argv[1:])),
        "data": str(args.data), "eval_dir": args.eval_dir, "n_train": len(train),
        "cv_folds": args.cv, "seed": args.seed, "threshold_rule": args.threshold_rule,
        "augment": args.augment, "tta": args.tta,
        "baseline": PROBE, "selected": selected, "selection": selection,
        "selection_tests": selection["tests"], "selected_vs_baselines": against_baselines,
        "best_feature_set_model": hybrid, "hybrid_vs_baselines": hybrid_vs_baselines,
        "summary": summary, "models": models,
        "comparisons": comparisons, "per_fold": per_fold,
        "wall_time_s": None,
    }
    curves = {"cv": (y, curves_cv)}
    if eval_index is not None:
        curves["eval"] = (eval_index.labels, curves_eval)
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_report(out, results, curves, examples=_examples(selected, finals, models, curves_eval,
                                                          curves_cv, eval_index, train))
    write_predictions(out / "predictions_cv.csv", train, curves_cv, fold=fold_of(folds, len(y)))
    if eval_index is not None:
        write_predictions(out / "predictions_eval.csv", eval_index, curves_eval)
    print(_console_table(models))
    print(summary)
    print(f"report: {out / 'report.html'}  ({results['wall_time_s']} s)")
    return 0


SELECTION_RULE = (
    "Candidates: every model this run can save (feature-set models and packaged CNNs whose "
    "out-of-fold predictions come from these folds). 1) CV: keep those whose CV AUC is "
    "non-inferior to the best candidate's within the selection margin (upper end of the 95% CI "
    "of the paired patient-bootstrap difference). 2) Shift: where the original image shapes "
    "are known (the native subset beside the data), keep those whose shortcut reliance (mean "
    "within-class Spearman rho between the out-of-fold logit and the original width/height) "
    "is within the reliance margin of the least. 3) The cheapest to score (fewest feature "
    "passes), then the highest CV AUC.")


def choose(models, curves_cv, train, args):
    """Apply `SELECTION_RULE` to the run's models; returns what metrics.json
    records of it: the rule, each candidate's evidence, who was left out and why,
    and the choice (``"selected"``), plus the model the same rule picks among
    the feature-set models alone (``"best_feature_set_model"``)."""
    y, groups = train.labels, train.groups
    for name, info in models.items():
        info["candidate"] = info.get("deployable", True) and name != PROBE
    left_out = {name: ("a packaged CNN's predictions without its network: compared, not "
                       "deployable" if name != PROBE else "the same model as cnn/logreg")
                for name, info in models.items() if not info["candidate"]}
    for network in sorted(MODELS_DIR.glob("cnn_*.onnx")):
        if f"baseline/{network.stem}" not in models:
            left_out[f"baseline/{network.stem}"] = (
                "packaged, but it has no out-of-fold predictions on these training images "
                "and folds, so it cannot be compared or chosen")
    aspect = native_aspect_ratios(train)
    reliance = {}
    if aspect is not None:
        reliance = {name: shortcut_reliance(y, curves_cv[name], aspect)
                    for name, info in models.items() if info["candidate"]}
    rule = dict(margin=args.selection_margin, reliance_margin=RELIANCE_MARGIN)
    figures = {name: r["mean"] for name, r in reliance.items()}
    selected, tests = select_model(models, curves_cv, y, groups, args.n_boot, args.seed,
                                   reliance=figures, **rule)
    feature_sets = {name: info for name, info in models.items()
                    if info["candidate"] and not name.startswith("baseline/")}
    hybrid = select_model(feature_sets, curves_cv, y, groups, args.n_boot, args.seed,
                          reliance=figures, **rule)[0] if feature_sets else selected
    evidence = {name: {"cv_auc": models[name]["cv"]["auc"], "passes":
                       feature_passes(models[name]["features"]),
                       "shortcut_reliance": reliance.get(name),
                       "auc_loss_vs_best": tests.get(name)}
                for name, info in models.items() if info["candidate"]}
    return {"rule": SELECTION_RULE, **rule, "native_shapes_known": int(np.isfinite(
                aspect).sum()) if aspect is not None else 0,
            "evidence": evidence, "left_out": left_out, "selected": selected,
            "best_feature_set_model": hybrid, "tests": tests}


def training_augment(feature_set, copies, y):
    """`DecisionClassifier.fit`'s keyword arguments for the training copies:
    ``X_aug`` (each copy set's features of ``feature_set``, stacked), ``y_aug``
    and ``aug_source`` (the row of ``y`` each copy was made from); ``{}`` when
    ``copies`` (from `extract_training_copies`) is empty."""
    if not copies:
        return {}
    y = np.asarray(y)
    return {"X_aug": np.vstack([_stack(feature_set, [c]) for c in copies]),
            "y_aug": np.tile(y, len(copies)),
            "aug_source": np.tile(np.arange(len(y)), len(copies))}


def _examples(selected, finals, models, curves_eval, curves_cv, eval_index, train):
    """What the report's gallery of worst errors needs: the selected model's
    final pipeline and the films it was judged on (the evaluation set, else
    the training films with their out-of-fold probabilities)."""
    if selected not in finals:
        return None
    part, index, curves = (("eval", eval_index, curves_eval) if selected in curves_eval
                           else ("cv", train, curves_cv))
    return {"pipeline": finals[selected], "paths": list(index.paths), "y": index.labels,
            "p": curves[selected], "threshold": models[selected][part]["threshold"]}


def _stack(feature_set, view_features):
    """The model's input: each view's features of ``feature_set``, side by side."""
    names = feature_set.split("+")
    return np.hstack([found[e] for found in view_features for e in names])


def _final_pipeline(feature_set, fitted_classifier, preprocessor, n_jobs, views=()):
    features = make_feature_union(feature_set, None, n_jobs)
    if views:
        return Pipeline([
            ("read", ReadImages()),
            ("features", ViewFeatures(clone(preprocessor), features, list(views))),
            ("classifier", fitted_classifier),
        ])
    return Pipeline([
        ("read", ReadImages()),
        ("preprocess", clone(preprocessor)),
        ("features", features),
        ("classifier", fitted_classifier),
    ])


def _console_table(models):
    width = max([len("model")] + [len(name) for name in models])
    lines = [f"{'model':<{width}} {'CV AUC':>7} {'CV acc':>7} {'eval AUC':>9} {'eval acc':>9} "
             f"{'eval sens':>9} {'eval spec':>9}"]
    for name, m in models.items():
        e = m.get("eval", {})
        cells = [e.get(k) for k in ("auc", "accuracy", "sensitivity", "specificity")]
        lines.append(f"{name:<{width}} {m['cv']['auc']:7.3f} {m['cv']['accuracy']:7.3f} "
                     + " ".join(f"{c:9.3f}" if c is not None else f"{'–':>9}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
