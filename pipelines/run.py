"""Cross-validated comparison of feature sets and heads against pure-CNN baselines.

Example::

    python -m pipelines.run --features hog,cnn,hog+cnn --eval-dir ../shared/data/kermany/site_val

Every model is scored on the same patient-grouped, label-stratified folds
(`xray_features.dataset.make_folds`). Its threshold and calibration come from
out-of-fold training predictions only. Each model is then refitted on all of
the training images and saved to ``<out>/models/<features>-<head>.joblib``; a
packaged CNN, calibrated and thresholded from its own out-of-fold predictions,
to ``<out>/models/cnn-<network>.joblib``. One rule chooses among them from
training data only (`pipelines.comparison.SELECTION_RULE`, docs/results.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from xray_features.dataset import fold_of, index_dataset, make_folds
from xray_features.preprocess import default_preprocessor
from xray_features.views import view_preprocessor, zoom_views

from .assemble import (AUGMENTATIONS, DEFAULT_AUGMENT, HEADS, extract_features,
                       extract_training_copies, make_cnn_pipeline, make_head, parse_feature_sets)
from .baselines import finetuned_baselines
from .comparison import (PROBE, cached_fit, choose, default_cache_dir, default_data_dir,
                         fit_decision, final_pipeline, library_versions, load_training_index,
                         model_metadata, model_specs, stack_views, training_augment)
from .logs import ensure_handler, get_logger, progress_enabled
from .metrics import DEFAULT_THRESHOLD_RULE, auc, binary_metrics
from .persist import save_model
from .report import write_predictions, write_report
from .selection import SELECTION_MARGIN, compare, evaluate

_log = get_logger("run")


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
                        "from hog, lbp, cnn, cnn160 (the CNN at 160 px), cnn_int8 (the CNN in "
                        "static int8, about 2x faster) "
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
                        help="step 1 of the selection rule: a candidate stays if its CV AUC is "
                        "within this of the best's (upper end of the 95%% CI of the paired "
                        "difference); then shortcut reliance, then scoring cost "
                        "(docs/results.md)")
    parser.add_argument("--n-boot", type=int, default=1000,
                        help="bootstrap replicates for confidence intervals")
    parser.add_argument("--dask", default=None, metavar="SCHEDULER",
                        help="extract features on a Dask cluster: 'local' (a LocalCluster) or "
                        "an address such as tcp://host:8786; images and --cache-dir must be "
                        "at the same paths on every worker (needs the dask extra)")
    parser.add_argument("--no-save", action="store_true", help="do not save fitted models")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


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
        X = stack_views(fs, features)
        augment = training_augment(fs, copies, y)
        fit_args = (make_head(head, args.seed), folds, X, y, augment, versions)
        fit_kwargs = {"n_views": 1 + len(views)} if views else {}
        if fit is not fit_decision and fit.check_call_in_cache(*fit_args, **fit_kwargs):
            log("  fitted models found in the cache")
        clf = fit(*fit_args, n_jobs=args.n_jobs, **fit_kwargs).rethreshold(y, args.threshold_rule)
        p_eval = None
        if eval_index is not None:
            Xe = stack_views(fs, eval_features)
            p_eval = clf.predict_proba(Xe)[:, 1]
        result = record(name, {"features": fs, "head": head}, clf.oof_proba_, p_eval,
                        clf.threshold_)
        if not name.startswith("baseline/"):
            finals[name] = pipeline = final_pipeline(fs, clf, preprocessor, args.n_jobs, views)
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
        pipeline = make_cnn_pipeline(base["model_path"], args.threshold_rule)
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
