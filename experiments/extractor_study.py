"""Other frozen embedders in the hybrid: input size and backbone.

    python experiments/embedder_study.py --variants cnn288            # CV and stress test
    python experiments/embedder_study.py --variants cnn288 --site-val # + one logged look each

Each variant replaces the packaged embedder (EfficientNet-Lite0 at 224 px):
``cnn288`` runs it on the preprocessed image upsampled to 288 px (ImageNet
networks often give better features above their training size); ``lite2``
is the ImageNet EfficientNet-Lite2 exported by
``python experiments/export_embedder.py --arch lite2 --out experiments/artifacts/efficientnet_lite2_embedder.onnx``.
Every model is trained as `pipelines.run` trains by default (counter-squash
copies of the training folds) and stress-tested on the counter-squashed copies
of its test folds (`aspect_study.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipelines.assemble import extract_counter_squash_features, extract_features, make_head
from xray_features.cnn import OnnxEmbedder
from xray_features.preprocess import default_preprocessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aspect_study import summary  # noqa: E402
from studies import (Results, cross_fit, site_val_look, study_parser,  # noqa: E402
                     train_site_folds)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VARIANTS = {
    "cnn288": lambda: OnnxEmbedder(image_size=288),
    "lite2": lambda: OnnxEmbedder(model_path=str(ARTIFACTS / "efficientnet_lite2_embedder.onnx")),
}


def main(argv=None):
    parser = study_parser(__doc__, out="runs/embedder_study.json")
    parser.add_argument("--variants", default="cnn288", help=", ".join(VARIANTS))
    args = parser.parse_args(argv)

    train, site, folds = train_site_folds(args.data)
    y = train.labels
    pre = default_preprocessor()
    results = Results()
    for variant in args.variants.split(","):
        extractors = {"hog": None, variant: VARIANTS[variant]()}
        names = list(extractors)
        common = dict(preprocessor=pre, extractors={variant: extractors[variant]})
        feats = extract_features(train.paths, names, args.cache_dir, **common)
        copies = extract_counter_squash_features(train.paths, y, names, args.cache_dir,
                                                 extractors=common["extractors"], preprocessor=pre)
        site_feats = (extract_features(site.paths, names, args.cache_dir, **common)
                      if args.site_val else None)
        for parts in ([variant], ["hog", variant]):
            name = "+".join(parts) + "/logreg-countersquash"
            X, X_copy = (np.hstack([f[n] for n in parts]) for f in (feats, copies))
            p, stressed, threshold, score = cross_fit(make_head("logreg"), X, y, folds, [X_copy],
                                                      {"counter_squashed": X_copy})
            p_copy = stressed["counter_squashed"]
            result, cv = summary(y, p, p_copy, threshold)
            if args.site_val:
                site_val_look(result, name + " (embedder_study)", cv, site.labels,
                              score(np.hstack([site_feats[n] for n in parts])), threshold)
            results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
