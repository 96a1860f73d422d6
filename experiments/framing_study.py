"""Framing: how much of the film the lungs fill, on train/ (by class) and on site_val/ (unlabelled).

    python experiments/framing_study.py

LungCrop's lung box (on the CLAHE'd 224-px image) gives the lungs' height and
width, and the film left above and below them, as fractions of the film's;
images where LungCrop falls back are left out. On train/ it also reports how
well each extent alone predicts the label (AUC). site_val/'s labels are not read: this compares image statistics only.
"""

from __future__ import annotations

import sys

import numpy as np

from pipelines.metrics import auc
from xray_features import ReadImages
from xray_features.preprocess import CLAHE, LungCrop

from studies import Results, study_parser, train_site_folds  # noqa: E402


def lung_extent(paths, batch=256):
    """(found, height fraction, width fraction, margin above, margin below) of
    the lung box of each image, as fractions of the film's height and width."""
    rows = []
    for start in range(0, len(paths), batch):
        images = CLAHE().transform(ReadImages().transform(paths[start:start + batch]))
        for box, image in zip(LungCrop().find_boxes(images), images):
            height, width = image.shape
            rows.append((box.found, (box.bottom - box.top) / height,
                         (box.right - box.left) / width, box.top / height,
                         (height - box.bottom) / height))
    found, *extents = (np.array(column) for column in zip(*rows))
    return (found.astype(bool), *extents)


def describe(found, height, width, above, below):
    return {"n": int(len(found)), "found": round(float(found.mean()), 3),
            **{f"{name}_median": round(float(np.median(values[found])), 3)
               for name, values in (("height", height), ("width", width),
                                    ("margin_above", above), ("margin_below", below))}}


def main(argv=None):
    parser = study_parser(__doc__, out="runs/framing_study.json", site_val=False)
    args = parser.parse_args(argv)
    train, site, _ = train_site_folds(args.data)
    results = Results()
    found, *extents = lung_extent(list(train.paths))
    y = train.labels
    for label, name in ((0, "train NORMAL"), (1, "train PNEUMONIA")):
        keep = y == label
        results.add(name, describe(found[keep], *(e[keep] for e in extents)))
    results.add("train: AUC of the extent for PNEUMONIA",
                {name: round(auc(y[found], values[found]), 3) for name, values in
                 zip(("height", "width", "margin_above", "margin_below"), extents)})
    results.add("train (all)", describe(found, *extents))
    if site is not None:
        results.add("site_val (unlabelled)", describe(*lung_extent(list(site.paths))))
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
