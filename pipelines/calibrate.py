"""Site recalibration: refit a saved pipeline's calibration and threshold
from a small labelled set of a new site.

Example::

    python -m pipelines.calibrate --model default --labelled-dir site_labelled/ --out site.joblib

The features and the head are kept; only the Platt calibration and the
decision threshold are refitted, on the site's images. A new model file
(with its sha256 sidecar) is written; the original is left untouched.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

from xray_features.dataset import index_dataset

from .decision import PlattCalibrator
from .metrics import binary_metrics, choose_threshold
from .persist import ModelFileError, load_model, save_model
from .score import DEFAULT_MODEL

__all__ = ["head_scores", "recalibrate", "main"]


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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.calibrate", description=__doc__.split("\n\n")[0] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="the saved pipeline to recalibrate (.joblib with sidecar)")
    parser.add_argument("--labelled-dir", required=True,
                        help="the site's labelled images: <dir>/NORMAL and <dir>/PNEUMONIA")
    parser.add_argument("--out", required=True, help="the new model file (.joblib)")
    parser.add_argument("--threshold-rule", default="youden",
                        help="'youden', 'sensitivity:0.95' or a number")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if Path(args.out).resolve() == Path(args.model).resolve():
        print("error: --out must differ from --model; the original is never overwritten",
              file=sys.stderr)
        return 2
    try:
        model, metadata = load_model(args.model)
        site = index_dataset(args.labelled_dir)
    except (ModelFileError, FileNotFoundError) as exc:
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


if __name__ == "__main__":
    sys.exit(main())
