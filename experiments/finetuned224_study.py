"""The 224-px fine-tuned Lite0 in the hybrid: its embeddings beside HOG, and
its probability averaged with the default hybrid's.

    python experiments/finetune_224.py --data DIR --out experiments/artifacts/ft224  # on a GPU
    python experiments/finetune_export.py experiments/artifacts/ft224
    python experiments/finetuned224_study.py              # CV, paired with the default
    python experiments/finetuned224_study.py --site-val   # + one logged look per model

Only the recipe that `finetune_224.py`'s rule picked (blind to site_val) is
used. Models, each with the logistic head:

- ``hog+ft224/logreg``: HOG beside the fine-tuned embedding. When the run kept
  its fold models (``finetune_224.py --save-folds``, exported by
  ``finetune_export.py``), it is cross-fitted as the default is: fold k's head
  trains on fold k's model's embeddings of its training images and of their
  counter-squash and zoom copies, and scores that model's embeddings of its
  test images; the final head uses the final model. Otherwise it is stacked,
  without copies: the head trains on the out-of-fold embeddings (each from the
  fold model that never saw that image) and the final head, trained on all of
  them, scores the final model's embeddings; its reference is then
  ``hog+cnn/logreg`` trained the same way, on the frozen embedding.
- ``ensemble hybrid+ft224``: the mean of the calibrated logits of the default
  hybrid (``hog+cnn/logreg`` with counter-squash and zoom copies) and of the
  fine-tuned CNN's probability; threshold: Youden on its out-of-fold mean.

Each is compared, paired by patient on the same out-of-fold images, with the
default hybrid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipelines.assemble import DEFAULT_AUGMENT, extract_features, extract_training_copies, make_head
from pipelines.baselines import OOF_DIR, saved_eval_scores
from pipelines.decision import mean_logit
from pipelines.metrics import binary_metrics, paired_bootstrap_auc
from xray_features.cnn import OnnxEmbedder
from xray_features.dataset import fold_of
from xray_features.hashing import file_sha256

from finetuned_study import cross_fit_per_fold  # noqa: E402
from studies import (Results, cross_fit, default_training_set, headline,  # noqa: E402
                     hybrid_features, mean_logit_ensemble, site_val_look, study_parser,
                     train_site_folds)

RUN = Path(__file__).resolve().parent / "artifacts" / "ft224"


def embedder(model):
    """The ``embedding`` output of an exported fine-tuned model (default
    preprocessing, 224 px); its sha256 keys the feature cache."""
    return {"ft224": OnnxEmbedder(model_path=str(model), expected_sha256=file_sha256(model))}


def exported_models(run, n_folds):
    """A `finetune_224.py` run's picked recipe, and the paths of its exported fold
    models and final model (`finetune_export.py`; they may not exist)."""
    picked = json.loads((run / "results.json").read_text())["picked"]
    return picked, [run / f"fold{k}_{picked}.onnx" for k in range(n_folds)], run / f"{picked}.onnx"


def require_exported(run, models):
    """Exit naming whichever of ``models`` is missing."""
    missing = [str(m) for m in models if not m.exists()]
    if missing:
        raise SystemExit(f"missing (run experiments/finetune_export.py {run}): {', '.join(missing)}")


def with_copies(paths, labels, names, cache_dir, **kwargs):
    """Features of ``paths`` and the list of their default copy sets."""
    found = extract_features(paths, names, cache_dir, **kwargs)
    copies = extract_training_copies(DEFAULT_AUGMENT, paths, labels, names, cache_dir, **kwargs)
    return found, copies


def hog_and_embedding(paths, model, cache_dir):
    """HOG and ``model``'s fine-tuned embedding of ``paths`` (no copies), as two arrays."""
    hog = extract_features(paths, ["hog"], cache_dir)["hog"]
    tuned = extract_features(paths, ["ft224"], cache_dir, extractors=embedder(model))["ft224"]
    return hog, tuned


def cross_fitted_blocks(models, train, cache_dir):
    """`cross_fit_per_fold` blocks of HOG beside each model's embedding, with copies."""
    hog, hog_copies = with_copies(train.paths, train.labels, ["hog"], cache_dir)
    blocks = []
    for model in models:
        tuned, tuned_copies = with_copies(train.paths, train.labels, ["ft224"], cache_dir,
                                          extractors=embedder(model))
        copies = [np.hstack([h["hog"], t["ft224"]]) for h, t in zip(hog_copies, tuned_copies)]
        blocks.append((np.hstack([hog["hog"], tuned["ft224"]]), copies))
    return blocks


def main(argv=None):
    parser = study_parser(__doc__, out="runs/finetuned224_study.json")
    parser.add_argument("--run", type=Path, default=RUN, help=f"(default: {RUN})")
    args = parser.parse_args(argv)
    train, site, folds = train_site_folds(args.data)
    picked, fold_models, model = exported_models(args.run, len(folds))
    if not model.exists():
        parser.error(f"{model} missing: run experiments/finetune_export.py {args.run}")
    stored = np.load(args.run / "oof.npz")
    y = train.labels
    if list(stored["fold"]) != list(fold_of(folds, len(y))) or list(stored["y"]) != list(y):
        parser.error(f"{args.run} was trained on other folds or images than the pipelines'")

    X_default, copies = default_training_set(train, args.cache_dir)
    p_default, _, _, score_default = cross_fit(make_head("logreg"), X_default, y, folds, copies)
    if args.site_val:
        site_hog, site_tuned = hog_and_embedding(site.paths, model, args.cache_dir)
        site_default = score_default(hybrid_features(site.paths, args.cache_dir))
        table = OOF_DIR / "site_val" / f"cnn_{args.run.name}_{picked}.csv"
        site_tuned_proba = saved_eval_scores(table, site.paths)
        if site_tuned_proba is None:
            parser.error(f"{table} does not score every site_val image: run "
                         f"experiments/finetune_export.py {args.run} --site-val")

    results = Results()
    if all(m.exists() for m in fold_models):
        blocks = cross_fitted_blocks(fold_models + [model], train, args.cache_dir)
        fits = {f"hog+ft224_{picked}/logreg-countersquash-zoom (cross-fitted)":
                cross_fit_per_fold(make_head("logreg"), blocks, y, folds)}
    else:  # stacked on the out-of-fold embeddings, no copies
        hog = extract_features(train.paths, ["hog"], args.cache_dir)["hog"]
        stacked = {"hog+cnn/logreg (frozen, no copies)": hybrid_features(train.paths,
                                                                         args.cache_dir),
                   f"hog+ft224_{picked}/logreg": np.hstack(
                       [hog, stored["embeddings"].astype(np.float32)])}
        fits = {}
        for name, X in stacked.items():
            p, _, threshold, score = cross_fit(make_head("logreg"), X, y, folds)
            fits[name] = (p, threshold, score)
    for name, (p, threshold, score) in fits.items():
        result = {"cv": headline(binary_metrics(y, p, threshold)), "threshold": round(threshold, 4),
                  "cv_vs_default": paired_bootstrap_auc(y, p, p_default, train.groups)}
        if args.site_val and "ft224" in name:
            site_val_look(result, name + " (finetuned224_study)",
                          binary_metrics(y, p, threshold), site.labels,
                          score(np.hstack([site_hog, site_tuned])), threshold)
        results.add(name, result)

    cv, threshold, test = mean_logit_ensemble(y, [p_default, stored[f"proba_{picked}"]],
                                              p_default, train.groups)
    result = {"cv": headline(cv), "threshold": round(threshold, 4), "cv_vs_default": test}
    if args.site_val:
        site_val_look(result, f"ensemble hybrid+ft224_{picked} (finetuned224_study)", cv,
                      site.labels, mean_logit([site_default, site_tuned_proba]), threshold)
    results.add(f"ensemble hybrid+ft224_{picked}", result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
