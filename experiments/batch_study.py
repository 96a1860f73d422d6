"""Where the over-calling falls: the share called PNEUMONIA per file-name batch.

    python experiments/batch_study.py runs/full_zoom

The Kermany files carry their batch in the name: NORMAL films are ``IM-…``
or ``NORMAL2-IM-…``, PNEUMONIA films ``person…_bacteria_…`` or
``person…_virus_…``. For each model of a `pipelines.run` output folder, this
gives, per batch, the number of images and the share at or above the model's
out-of-fold threshold: out of fold on train/ (``predictions_cv.csv``) and on
the evaluation set (``predictions_eval.csv``). It fits nothing; on site_val
it reads labels through the file names, so a run on site_val is a look
(logged as prose in `site_val_log.md`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ensemble_study import read_predictions  # noqa: E402
from studies import Results, study_parser  # noqa: E402

BATCHES = ("IM", "NORMAL2-IM", "bacteria", "virus")
MODELS = ("hog+cnn/logreg", "hog+cnn/xgb", "baseline/cnn-probe")


def batch_of(path):
    """The batch a Kermany file name gives, or ``None``."""
    name = Path(path).name
    if name.startswith("NORMAL2-IM"):
        return "NORMAL2-IM"
    if name.startswith("IM-"):
        return "IM"
    for kind in ("bacteria", "virus"):
        if f"_{kind}_" in name:
            return kind
    return None


def called_by_batch(paths, scores, threshold):
    """``{batch: {"n": …, "called_pneumonia": …}}`` over the batches present."""
    batches = np.array([batch_of(p) for p in paths], dtype=object)
    return {b: {"n": int((batches == b).sum()),
                "called_pneumonia": round(float(np.mean(scores[batches == b] >= threshold)), 3)}
            for b in BATCHES if (batches == b).any()}


def main(argv=None):
    parser = study_parser(__doc__, out="runs/batch_study.json", site_val=False)
    parser.add_argument("run", type=Path, help="a pipelines.run --out folder")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    metrics = json.loads((args.run / "metrics.json").read_text())["models"]
    tables = {"cv": read_predictions(args.run / "predictions_cv.csv")}
    if (args.run / "predictions_eval.csv").exists():
        tables["eval"] = read_predictions(args.run / "predictions_eval.csv")
    results = Results()
    for model in args.models.split(","):
        threshold = metrics[model]["cv"]["threshold"]
        result = {"threshold": round(threshold, 4)}
        for name, (paths, _, _, scores) in tables.items():
            result[name] = called_by_batch(paths, scores[model], threshold)
        results.add(model, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
