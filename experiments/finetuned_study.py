"""Fine-tuned against frozen embeddings in the hybrid, cross-fitted.

    python experiments/finetuned_study.py              # CV, and the paired CV comparison
    python experiments/finetuned_study.py --site-val   # + one logged look per model

The fine-tuned CNN is the EfficientNet-Lite0 shipped as the pure-CNN baseline
(``python experiments/train_cnn.py --arch lite0 --size 128 --epochs 3
--freeze-blocks 5 --augment --threads 1 --out experiments/artifacts/lite0_128_aug_e3``,
about 67 min on one core). Its fold models were trained on the pipelines'
folds, so fold k's head is trained on fold k's CNN embeddings (``embedding``
output, 1280 wide) of fold k's training images and their counter-squash
copies, and tested on that CNN's embeddings of fold k's test images, which it
never saw. The final head uses ``final.onnx``. The CNN sees the images as it
was trained on them (CLAHE, LungCrop, pad-resize, 128 px); HOG sees the
default preprocessing.

Models: ``ftcnn`` (fine-tuned embedding alone) and ``hog+ftcnn``, each with
the logistic head; compared, paired on the same out-of-fold images, with the
default hybrid (hog + frozen Lite0 embedding).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from pipelines.assemble import extract_counter_squash_features, extract_features, make_head
from pipelines.decision import PlattCalibrator
from pipelines.baselines import read_oof
from pipelines.metrics import binary_metrics, paired_bootstrap_auc, youden_threshold
from xray_features.dataset import fold_of
from xray_features.cnn import OnnxEmbedder
from xray_features.preprocess import default_preprocessor

from studies import (Results, cross_fit, fit_with_copies, headline,  # noqa: E402
                     site_val_look, study_parser, train_site_folds)

RUN = Path(__file__).resolve().parent / "artifacts" / "lite0_128_aug_e3"
CNN_PREPROCESSOR = default_preprocessor(crop=True, resize_mode="pad")  # as train_cnn.py


def embeddings(model, paths, cache_dir, labels=None):
    """The fine-tuned ``model``'s embeddings of ``paths`` (of their
    counter-squash copies, with ``labels``)."""
    extractors = {"ftcnn": OnnxEmbedder(model_path=str(model), image_size=128)}
    common = dict(preprocessor=CNN_PREPROCESSOR, extractors=extractors)
    if labels is None:
        return extract_features(paths, ["ftcnn"], cache_dir, **common)["ftcnn"]
    return extract_counter_squash_features(paths, labels, ["ftcnn"], cache_dir, **common)["ftcnn"]


def cross_fit_per_fold(head, blocks, y, folds):
    """Like `studies.fold_models`, but each fold (and the final fit) has its own
    features: ``blocks[k] = (X, copies)`` for fold k (``copies``: a list of
    arrays, one copy per row of ``X``), ``blocks[-1]`` for the final fit."""
    raw = np.zeros(len(y))
    for (train, test), (X, copies) in zip(folds, blocks):
        model = fit_with_copies(head, X, y, copies, train)
        raw[test] = model.predict_proba(X[test])[:, 1]
    calibrator = PlattCalibrator().fit(raw, y)
    X, copies = blocks[-1]
    final = fit_with_copies(head, X, y, copies)
    p = calibrator.transform(raw)
    return p, youden_threshold(y, p), lambda Z: calibrator.transform(final.predict_proba(Z)[:, 1])


def main(argv=None):
    parser = study_parser(__doc__, out="runs/finetuned_study.json")
    args = parser.parse_args(argv)
    models = [RUN / f"fold{k}.onnx" for k in range(5)] + [RUN / "final.onnx"]
    missing = [str(m) for m in models if not m.exists()]
    if missing:
        parser.error("fine-tuned models missing (run the train_cnn.py command in this "
                     f"script's docstring): {', '.join(missing)}")

    train, site, folds = train_site_folds(args.data)
    y = train.labels
    trained_on = read_oof(RUN / "oof.csv")
    if [trained_on[os.path.relpath(r.path, train.root)][1] for r in train.records] != \
            list(fold_of(folds, len(y))):
        parser.error(f"{RUN} was trained on other folds than the pipelines'")
    hog = extract_features(train.paths, ["hog", "cnn"], args.cache_dir)
    hog_copy = extract_counter_squash_features(train.paths, y, ["hog", "cnn"], args.cache_dir)
    tuned = [(embeddings(m, train.paths, args.cache_dir),
              embeddings(m, train.paths, args.cache_dir, labels=y)) for m in models]
    if args.site_val:
        site_hog = extract_features(site.paths, ["hog"], args.cache_dir)["hog"]
        site_tuned = embeddings(models[-1], site.paths, args.cache_dir)

    # the default hybrid, on the same folds: the reference of the paired comparison
    frozen = np.hstack([hog["hog"], hog["cnn"]])
    frozen_copy = np.hstack([hog_copy["hog"], hog_copy["cnn"]])
    p_default = cross_fit(make_head("logreg"), frozen, y, folds, [frozen_copy])[0]

    results = Results()
    for with_hog in (False, True):
        name = ("hog+" if with_hog else "") + "ftcnn/logreg-countersquash"
        blocks = [(np.hstack([hog["hog"], E]), [np.hstack([hog_copy["hog"], E_copy])])
                  if with_hog else (E, [E_copy]) for E, E_copy in tuned]
        p, threshold, score = cross_fit_per_fold(make_head("logreg"), blocks, y, folds)
        cv = binary_metrics(y, p, threshold)
        result = {"cv": headline(cv), "threshold": round(threshold, 4)}
        result["cv_vs_default_hybrid"] = paired_bootstrap_auc(y, p, p_default, train.groups)
        if args.site_val:
            Z = np.hstack([site_hog, site_tuned]) if with_hog else site_tuned
            site_val_look(result, name + " (finetuned_study)", cv, site.labels, score(Z),
                          threshold)
        results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
