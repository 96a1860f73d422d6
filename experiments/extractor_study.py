"""Other extractors in the hybrid: the embedder's input size and backbone, HOG's grid.

    python experiments/extractor_study.py --variants cnn288            # CV and stress test
    python experiments/extractor_study.py --variants cnn288 --site-val # + one logged look each
    python experiments/extractor_study.py --variants hog64 --heads logreg,xgb

Each variant replaces one packaged extractor:

- ``cnn288`` runs the embedder (EfficientNet-Lite0, 224 px) on the preprocessed
  image upsampled to 288 px (ImageNet networks often give better features
  above their training size);
- ``lite2`` is the ImageNet EfficientNet-Lite2 exported by
  ``python experiments/export_embedder.py --arch lite2 --out experiments/artifacts/efficientnet_lite2_embedder.onnx``;
- ``grid2`` is the packaged Lite0 with its last feature map averaged per
  quadrant instead of globally (5,120 features; where in the chest the
  texture is), exported by
  ``python experiments/export_embedder.py --grid 2`` (to experiments/artifacts/);
- ``hog64`` is HOG on a 4 x 4 grid of 16-px cells (64 px, 324 features, against
  1,764 for the default 8 x 8 grid at 128 px);
- ``hog-fine`` is HOG on 8-px cells at 128 px (a 16 x 16 grid, 8,100 features).

An embedder variant is scored alone and with HOG; a HOG variant with the
embedder. Every model is trained as `pipelines.run` trains by default
(counter-squash copies of the training folds) and stress-tested on the
counter-squashed copies of its test folds (`aspect_study.py`). Each result
carries the wall time of its cross-fitting (5 folds and the final fit).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from pipelines.assemble import extract_counter_squash_features, extract_features, make_head
from xray_features.cnn import OnnxEmbedder
from xray_features.preprocess import default_preprocessor
from xray_features.texture import HOGFeatures

from aspect_study import summary  # noqa: E402
from studies import (Results, cross_fit, site_val_look, study_parser,  # noqa: E402
                     train_site_folds)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# name -> (the packaged extractor it replaces, a factory)
VARIANTS = {
    "cnn288": ("cnn", lambda: OnnxEmbedder(image_size=288)),
    "lite2": ("cnn", lambda: OnnxEmbedder(
        model_path=str(ARTIFACTS / "efficientnet_lite2_embedder.onnx"))),
    "grid2": ("cnn", lambda: OnnxEmbedder(
        model_path=str(ARTIFACTS / "efficientnet_lite0_grid2_embedder.onnx"))),
    "hog64": ("hog", lambda: HOGFeatures(image_size=64)),
    "hog-fine": ("hog", lambda: HOGFeatures(pixels_per_cell=8)),
}


def models_of(variant):
    """The feature sets that test ``variant``."""
    replaces = VARIANTS[variant][0]
    return [[variant], ["hog", variant]] if replaces == "cnn" else [[variant, "cnn"]]


def main(argv=None):
    parser = study_parser(__doc__, out="runs/extractor_study.json")
    parser.add_argument("--variants", default="cnn288", help=", ".join(VARIANTS))
    parser.add_argument("--heads", default="logreg", help="comma-separated: logreg, xgb")
    args = parser.parse_args(argv)

    train, site, folds = train_site_folds(args.data)
    y = train.labels
    pre = default_preprocessor()
    results = Results()
    for variant in args.variants.split(","):
        overrides = {variant: VARIANTS[variant][1]()}
        names = sorted({n for parts in models_of(variant) for n in parts})
        common = dict(preprocessor=pre, extractors=overrides)
        feats = extract_features(train.paths, names, args.cache_dir, **common)
        copies = extract_counter_squash_features(train.paths, y, names, args.cache_dir, **common)
        site_feats = (extract_features(site.paths, names, args.cache_dir, **common)
                      if args.site_val else None)
        for parts in models_of(variant):
            for head in args.heads.split(","):
                name = "+".join(parts) + f"/{head}-countersquash"
                X, X_copy = (np.hstack([f[n] for n in parts]) for f in (feats, copies))
                started = time.perf_counter()
                p, stressed, threshold, score = cross_fit(make_head(head), X, y, folds, [X_copy],
                                                          {"counter_squashed": X_copy})
                fit_s = time.perf_counter() - started
                result, cv = summary(y, p, stressed["counter_squashed"], threshold)
                result["n_features"], result["cross_fit_s"] = X.shape[1], round(fit_s, 1)
                if args.site_val:
                    site_val_look(result, name + " (extractor_study)", cv, site.labels,
                                  score(np.hstack([site_feats[n] for n in parts])), threshold)
                results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
