"""HOG beside the fine-tuned CNN's own out-of-fold logit, instead of beside its
embedding.

    python experiments/logit_stack_study.py --run experiments/artifacts/ft224_cs_folds
    python experiments/logit_stack_study.py --run ... --site-val   # + one logged look

Designed after `shift_attribution_study.py --run` showed that a logistic head
refitted on a fine-tuned network's embeddings ranks the new site worse than
the network's own head. Here the network keeps its head: each training film
(and each of its counter-squash and zoom copies) gets the logit of the fold
model that never saw it, and the logistic head of the default (standardise,
L2 logistic regression) learns HOG beside that one column, cross-validated on
the same folds with the same copies as the default. The final head scores
site_val with the final model's logit. The logits come from the embeddings
that `finetuned224_study.py` cached, through each exported model's own final
layer (``model.fc``), so no network is rerun.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pipelines.assemble import make_head
from pipelines.metrics import binary_metrics, paired_bootstrap_auc
from xray_features.dataset import fold_of

from finetuned224_study import (embedder, exported_models, hog_and_embedding,  # noqa: E402
                                require_exported, with_copies)
from studies import (Results, cross_fit, default_training_set, headline,  # noqa: E402
                     site_val_look, study_parser, train_site_folds)


def final_layer(model):
    """The exported model's ``model.fc`` weight (1280,) and bias."""
    weights = {w.name: numpy_helper.to_array(w) for w in onnx.load(str(model)).graph.initializer}
    return weights["model.fc.weight"][0].astype(np.float64), float(weights["model.fc.bias"][0])


def logits(layer, embeddings):
    """The logit of each embedding row through ``layer`` (`final_layer`'s weight and bias)."""
    weight, bias = layer
    return np.asarray(embeddings, dtype=np.float64) @ weight + bias


def out_of_fold_logits(fold_models, train, folds, cache_dir):
    """Each film's and each copy's logit from the fold model that never saw the film."""
    fold = fold_of(folds, len(train))
    oof, oof_copies = np.zeros(len(train)), None
    for k, model in enumerate(fold_models):
        found, copies = with_copies(train.paths, train.labels, ["ft224"], cache_dir,
                                    extractors=embedder(model))
        if oof_copies is None:
            oof_copies = [np.zeros(len(train)) for _ in copies]
        mine, layer = fold == k, final_layer(model)
        oof[mine] = logits(layer, found["ft224"][mine])
        for target, copy in zip(oof_copies, copies):
            target[mine] = logits(layer, copy["ft224"][mine])
    return oof, oof_copies


def main(argv=None):
    parser = study_parser(__doc__, out="runs/logit_stack_study.json")
    parser.add_argument("--run", type=Path, required=True,
                        help="a finetune_224.py --save-folds run, exported by finetune_export.py")
    args = parser.parse_args(argv)
    train, site, folds = train_site_folds(args.data)
    y = train.labels
    picked, fold_models, final_model = exported_models(args.run, len(folds))
    require_exported(args.run, fold_models + [final_model])

    oof, oof_copies = out_of_fold_logits(fold_models, train, folds, args.cache_dir)
    hog, hog_copies = with_copies(train.paths, train.labels, ["hog"], args.cache_dir)
    X = np.hstack([hog["hog"], oof[:, None]])
    copies = [np.hstack([h["hog"], c[:, None]]) for h, c in zip(hog_copies, oof_copies)]
    p, _, threshold, score = cross_fit(make_head("logreg"), X, y, folds, copies)
    X_default, default_copies = default_training_set(train, args.cache_dir)
    p_default = cross_fit(make_head("logreg"), X_default, y, folds, default_copies)[0]
    stored = np.load(args.run / "oof.npz")
    cv = binary_metrics(y, p, threshold)
    name = f"hog+ft224_{picked}-logit/logreg-countersquash-zoom (stacked out of fold)"
    result = {"cv": headline(cv), "threshold": round(threshold, 4),
              "cv_vs_default": paired_bootstrap_auc(y, p, p_default, train.groups),
              "cv_vs_cnn_alone": paired_bootstrap_auc(y, p, stored[f"proba_{picked}"],
                                                      train.groups),
              "cnn_logit_alone_cv_auc": round(binary_metrics(y, oof, 0.0)["auc"], 4)}
    if args.site_val:
        site_hog, site_tuned = hog_and_embedding(site.paths, final_model, args.cache_dir)
        site_logit = logits(final_layer(final_model), site_tuned)
        site_val_look(result, name + " (logit_stack_study)", cv, site.labels,
                      score(np.hstack([site_hog, site_logit[:, None]])), threshold)
    results = Results()
    results.add(name, result)
    results.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
