"""Train-only evidence behind the selection rule and the operating point.

    python experiments/operating_point_study.py runs/full --out runs/operating_point.json

Reads a `pipelines.run` output folder's ``predictions_cv.csv`` (out-of-fold
probabilities of every model on train/; no evaluation image is read) and,
for every model, prints:

- its **shortcut reliance**: Spearman's rho between the out-of-fold logit and
  the original width / height of the film, within NORMAL and within
  PNEUMONIA images, on the training images whose original shape the
  aspect-preserving subset beside the data records
  (`pipelines.selection.shortcut_reliance`), with its patient-bootstrap
  standard error;
- how **stable each threshold rule** is: the Youden threshold and the
  ``sensitivity:0.95`` threshold, each with its standard deviation over
  patient-bootstrap resamples of the out-of-fold predictions, and the
  out-of-fold sensitivity and specificity each gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipelines.metrics import binary_metrics, choose_threshold
from pipelines.report import read_predictions
from pipelines.selection import native_aspect_ratios, shortcut_reliance
from xray_features.dataset import index_dataset

RULES = ("youden", "sensitivity:0.95")


def read_run(run_dir):
    """(paths, labels, patients, {model: out-of-fold probabilities}) of a run."""
    return read_predictions(Path(run_dir) / "predictions_cv.csv")


def aspect_of(paths, data_dir):
    """Original width / height of each of ``paths`` (NaN where unknown)."""
    index = index_dataset(data_dir).subset("train")
    known = dict(zip(index.paths, native_aspect_ratios(index)))
    return np.array([known.get(p, np.nan) for p in paths])


def study(y, patients, probas, aspect, n_boot=200, seed=0):
    """Every model's evidence (see the module docstring)."""
    unique, patient = np.unique(patients, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        weight = np.bincount(rng.integers(0, len(unique), len(unique)),
                             minlength=len(unique))[patient]
        draws.append(np.repeat(np.arange(len(y)), weight))
    out = {}
    for name, p in probas.items():
        reliance = shortcut_reliance(y, p, aspect)
        reliance["se"] = float(np.std([shortcut_reliance(y[i], p[i], aspect[i])["mean"]
                                       for i in draws]))
        rules = {}
        for rule in RULES:
            threshold = choose_threshold(y, p, rule)
            at = binary_metrics(y, p, threshold)
            rules[rule] = {"threshold": threshold,
                           "bootstrap_sd": float(np.std([choose_threshold(y[i], p[i], rule)
                                                         for i in draws])),
                           "sensitivity": at["sensitivity"], "specificity": at["specificity"]}
        out[name] = {"shortcut_reliance": reliance, "thresholds": rules}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a pipelines.run output folder")
    parser.add_argument("--data", default="../shared/data/kermany",
                        help="the data root the run trained on")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--out", default=None, help="JSON output (under runs/)")
    args = parser.parse_args(argv)
    paths, y, patients, probas = read_run(args.run)
    aspect = aspect_of(paths, args.data)
    if not np.isfinite(aspect).any():
        parser.error("no original shapes known: the native subset must sit beside the data")
    result = study(y, patients, probas, aspect, args.n_boot)
    print(f"{'model':32s} {'rho NORMAL':>10} {'PNEUMONIA':>9} {'mean':>6} {'se':>5} | "
          + " | ".join(f"{rule}: thr (sd) sens spec" for rule in RULES))
    for name, r in result.items():
        s = r["shortcut_reliance"]
        cells = [f"{t['threshold']:.3f} ({t['bootstrap_sd']:.3f}) {t['sensitivity']:.3f} "
                 f"{t['specificity']:.3f}" for t in r["thresholds"].values()]
        print(f"{name:32s} {s['normal']:+10.3f} {s['pneumonia']:+9.3f} {s['mean']:+6.3f} "
              f"{s['se']:5.3f} | " + " | ".join(cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"run": str(args.run), "n_images_with_shape":
                                              int(np.isfinite(aspect).sum()), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
