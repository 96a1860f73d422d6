"""Site recalibration: refit a saved pipeline's calibration and threshold
from a small labelled set of a new site, or correct its probabilities for
the site's prevalence.

Examples::

    python -m pipelines.calibrate --labelled-dir site_labelled/ --out site.joblib
    python -m pipelines.calibrate --prevalence 0.3 --out site.joblib
    python -m pipelines.calibrate --prevalence 0.3 --unlabelled-dir site_films/ --out site.joblib

The features and the head are kept. With ``--labelled-dir`` the Platt
calibration and the decision threshold are refitted on the site's images.
With ``--prevalence`` (no images needed) the probabilities are moved to the
site's share of pneumonia by prior correction, and the threshold moves with
them, so every decision stays as it was. Adding ``--unlabelled-dir`` also
moves the threshold: to the score above which that share of the site's own
unlabelled films lies. A new model file (with its sha256 sidecar) is
written; the original is left untouched.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from xray_features.dataset import index_dataset

from .decision import PlattCalibrator, prior_corrected, prior_shift
from .metrics import binary_metrics, choose_threshold, quantile_threshold
from .multiclass import is_multiclass, three_class_refusal
from .persist import ModelFileError, load_model, save_model
from .score import DEFAULT_MODEL, expand_inputs
from .scoring import probabilities_of

__all__ = ["head_scores", "recalibrate", "adjust_prevalence", "threshold_from_unlabelled", "main"]

MIN_UNLABELLED = 20  # below this the share called PNEUMONIA is too noisy a target
MIN_LABELLED_PER_CLASS = 5  # below this a Platt fit and threshold rest on a handful of films


def check_labelled_counts(labels):
    """Refuse a labelled set with fewer than `MIN_LABELLED_PER_CLASS` films of a class."""
    labels = np.asarray(labels)
    counts = {name: int(np.sum(labels == k)) for k, name in enumerate(("NORMAL", "PNEUMONIA"))}
    if min(counts.values()) < MIN_LABELLED_PER_CLASS:
        raise ValueError(f"the labelled set has {counts['NORMAL']} NORMAL and "
                         f"{counts['PNEUMONIA']} PNEUMONIA images; at least "
                         f"{MIN_LABELLED_PER_CLASS} of each are needed to refit the calibration "
                         "and the threshold")


def head_scores(model, paths):
    """The head's uncalibrated probabilities for ``paths`` (averaged over
    test-time views, for a model that has them)."""
    features = model[:-1].transform(list(paths))
    return model.steps[-1][1].raw_score(features)


def recalibrate(model, raw_scores, labels, threshold_rule="youden"):
    """A copy of ``model`` whose calibrator and threshold come from the site data."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        raise ValueError("the labelled set needs both NORMAL and PNEUMONIA images")
    new = copy.deepcopy(model)
    decision = new.steps[-1][1]
    decision.calibrator_ = PlattCalibrator().fit(raw_scores, labels)
    calibrated = decision.calibrator_.transform(raw_scores)
    decision.threshold_ = choose_threshold(labels, calibrated, threshold_rule)
    return new


def adjust_prevalence(model, prevalence, metadata=None):
    """A copy of ``model`` whose probabilities are prior-corrected to
    ``prevalence`` (the site's share of PNEUMONIA), and its threshold with
    them, so its decisions are unchanged. Returns ``(model, from_prevalence)``."""
    new = copy.deepcopy(model)
    decision = new.steps[-1][1]
    calibrator = decision.calibrator_
    if calibrator is None:
        raise ValueError("prior correction needs a model with a probability calibration")
    fitted = getattr(calibrator, "prevalence_", None)
    if fitted is None:  # pickled before calibrators recorded it
        if (metadata or {}).get("site_calibration"):
            raise ValueError("this site-calibrated model does not record the prevalence it was "
                             "calibrated on: recalibrate it again from --labelled-dir first")
        # Platt's calibrated out-of-fold probabilities average to the training prevalence
        fitted = float(np.mean(decision.oof_proba_))
    decision.calibrator_ = calibrator.with_prevalence(prevalence, fitted)
    decision.threshold_ = float(prior_corrected(decision.threshold_, fitted, prevalence))
    return new, fitted


def threshold_from_unlabelled(model, paths, prevalence):
    """A copy of ``model`` that calls the ``prevalence`` share of the films in
    ``paths`` PNEUMONIA (its probabilities unchanged), and the paths of the
    files that could not be scored, with their errors."""
    paths, scores, failed = list(paths), [], []
    with tqdm(total=len(paths), unit="img", desc="scoring unlabelled films",
              disable=None) as bar:  # shown on a terminal only
        for start in range(0, len(paths), 64):
            batch = paths[start:start + 64]
            found, errors = probabilities_of(model, batch)
            scores += [p for p in found if p is not None]
            failed += [(batch[i], message) for i, message in sorted(errors.items())]
            bar.update(len(batch))
    if len(scores) < MIN_UNLABELLED:
        raise ValueError(f"only {len(scores)} of {len(paths)} unlabelled files could be scored; "
                         f"at least {MIN_UNLABELLED} are needed to set a threshold")
    new = copy.deepcopy(model)
    new.steps[-1][1].threshold_ = quantile_threshold(scores, prevalence)
    return new, len(scores), failed


def build_parser():
    """The argument parser of ``python -m pipelines.calibrate``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.calibrate",
        description=__doc__.split("\n\n")[0].rstrip(".") + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="the saved pipeline to recalibrate (.joblib with sidecar)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labelled-dir",
                        help="the site's labelled images: <dir>/NORMAL and <dir>/PNEUMONIA; "
                        "the calibration and the threshold are refitted on them")
    source.add_argument("--prevalence", type=float,
                        help="the site's share of PNEUMONIA among the images it will score "
                        "(e.g. 0.3); the probabilities are corrected to it and every "
                        "decision is kept (no images needed), unless --unlabelled-dir is given")
    parser.add_argument("--unlabelled-dir",
                        help="with --prevalence: the site's own unlabelled films (a folder, "
                        "searched recursively); the threshold is set so that the --prevalence "
                        f"share of them is called PNEUMONIA (at least {MIN_UNLABELLED} films)")
    parser.add_argument("--out", required=True, help="the new model file (.joblib)")
    parser.add_argument("--threshold-rule", default="youden",
                        help="with --labelled-dir: 'youden', 'sensitivity:0.95' or a number")
    return parser


def main(argv=None):
    """Run the site recalibration CLI on ``argv``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.unlabelled_dir is not None and args.prevalence is None:
        parser.error("--unlabelled-dir needs --prevalence, the share of those films to call "
                     "PNEUMONIA")
    if Path(args.out).resolve() == Path(args.model).resolve():
        print("error: --out must differ from --model; the original is never overwritten",
              file=sys.stderr)
        return 2
    try:
        model, metadata = load_model(args.model)
        if is_multiclass(model):
            raise ValueError(three_class_refusal("pipelines.calibrate"))
        if args.prevalence is not None:
            return _write_prevalence_adjusted(model, metadata, args)
        site = index_dataset(args.labelled_dir)
        check_labelled_counts(site.labels)
    except (ModelFileError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raw = head_scores(model, site.paths)
    try:
        new = recalibrate(model, raw, site.labels, args.threshold_rule)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    decision = new.steps[-1][1]
    fitted = binary_metrics(site.labels, decision.calibrator_.transform(raw), decision.threshold_)
    metadata = {**metadata, "threshold": decision.threshold_,
                "site_calibration": {"labelled_dir": str(args.labelled_dir), "n": len(site),
                                     "n_pneumonia": int(site.labels.sum()),
                                     "threshold_rule": args.threshold_rule,
                                     "source_model": str(args.model),
                                     "in_sample_metrics": fitted}}
    save_model(new, args.out, metadata)
    print(f"recalibrated on {len(site)} images ({int(site.labels.sum())} pneumonia): threshold "
          f"{decision.threshold_:.3f}; in-sample sensitivity {fitted['sensitivity']:.3f}, "
          f"specificity {fitted['specificity']:.3f}. Wrote {args.out}", file=sys.stderr)
    return 0


def _write_prevalence_adjusted(model, metadata, args):
    old_threshold = model.steps[-1][1].threshold_
    new, fitted = adjust_prevalence(model, args.prevalence, metadata)
    correction = {"prevalence": args.prevalence, "from_prevalence": fitted,
                  "logit_shift": prior_shift(fitted, args.prevalence),
                  "source_model": str(args.model)}
    outcome = "so every decision is unchanged"
    if args.unlabelled_dir is not None:
        if not Path(args.unlabelled_dir).is_dir():
            raise FileNotFoundError(f"unlabelled folder not found: {args.unlabelled_dir}")
        paths = expand_inputs([args.unlabelled_dir])
        new, n_scored, failed = threshold_from_unlabelled(new, paths, args.prevalence)
        for path, error in failed:
            print(f"skipped {path}: {error}", file=sys.stderr)
        correction["unlabelled"] = {"dir": str(args.unlabelled_dir), "n": n_scored,
                                    "n_skipped": len(failed)}
        outcome = (f"set so that {args.prevalence:.3f} of the {n_scored} unlabelled films in "
                   f"{args.unlabelled_dir} are called PNEUMONIA")
    decision = new.steps[-1][1]
    metadata = {**metadata, "threshold": decision.threshold_, "prior_correction": correction}
    save_model(new, args.out, metadata)
    print(f"probabilities corrected from a prevalence of {fitted:.3f} to {args.prevalence:.3f}; "
          f"threshold {old_threshold:.3f} -> {decision.threshold_:.3f}, {outcome}. "
          f"Wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
