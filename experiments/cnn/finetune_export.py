"""Export the models of a `finetune_224.py` run to ONNX, write their
prediction tables, and (``--site-val``) check them on site_val/.

    python experiments/cnn/finetune_export.py experiments/artifacts/ft224 [--site-val]

For each recipe in ``RUN/results.json``: ``RUN/<recipe>.onnx`` (outputs
``probability`` and ``embedding``, checked against torch; and
``RUN/fold<k>_<recipe>.onnx`` for fold models saved with ``--save-folds``,
their fp16 weights widened to fp32) and its
out-of-fold probabilities, ``cnn_<RUN name>_<recipe>.csv``, in ``--oof-dir``
(default ``runs/oof``; ``xray_features/models/oof``, where `pipelines.run`
reports the picked recipe as a baseline, only when you say so) for the recipe
the run picked and in its ``unpicked/`` subfolder for the others. With
``--site-val``, the final models' site_val predictions go to its ``site_val/``
subfolder, scored at their out-of-fold Youden threshold, one look per recipe
logged in ``runs/site_val_looks.md`` and printed for experiments/site_val_log.md.
Prints a JSON line per recipe and writes ``RUN/export.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from finetune_224 import FineTuned  # noqa: E402
from train_cnn import export, log_site_val_look, scores, write_predictions  # noqa: E402

from pipelines.metrics import youden_threshold  # noqa: E402
from xray_features import index_dataset, read_xray  # noqa: E402
from xray_features.cnn import OnnxCNNClassifier  # noqa: E402
from xray_features.hashing import file_sha256  # noqa: E402
from xray_features.preprocess import default_preprocessor  # noqa: E402

OOF = Path("runs") / "oof"  # git-ignored; pass --oof-dir xray_features/models/oof to publish


def load(state_path):
    model = FineTuned()
    weights = torch.load(state_path, map_location="cpu")
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model.eval()


def write_site_predictions(path, site, data_root, proba):
    """CSV path,label,fold,proba,sha256 (fold -1; sha256 of the file, by which
    `pipelines.baselines` matches the scores to an evaluation set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "fold", "proba", "sha256"])
        for image, label, p in zip(site.paths, site.labels, proba):
            writer.writerow([os.path.relpath(image, data_root), label, -1, round(float(p), 6),
                             file_sha256(image)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finetune_224.py output folder")
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--oof-dir", type=Path, default=OOF, help=f"(default: {OOF})")
    parser.add_argument("--site-val", action="store_true",
                        help="score site_val once per recipe and log it")
    args = parser.parse_args(argv)
    results = json.loads((args.run / "results.json").read_text())
    stored = np.load(args.run / "oof.npz")
    y, fold = stored["y"], stored["fold"]
    site = index_dataset(args.data).subset("site_val") if args.site_val else None
    if site is not None:  # the images the fine-tuned models were trained on: default preprocessing
        site_images = default_preprocessor().fit_transform([read_xray(p) for p in site.paths])
    report = {}
    for recipe, result in results["recipes"].items():
        onnx_path = args.run / f"{recipe}.onnx"
        parity = export(load(args.run / f"final_{recipe}.pt"), onnx_path, 224)
        for fold_weights in sorted(args.run.glob(f"fold[0-9]_{recipe}.pt")):
            export(load(fold_weights), fold_weights.with_suffix(".onnx"), 224)
        proba = stored[f"proba_{recipe}"]
        table = f"cnn_{args.run.name}_{recipe}.csv"
        folder = args.oof_dir if recipe == results["picked"] else args.oof_dir / "unpicked"
        folder.mkdir(parents=True, exist_ok=True)
        write_predictions(folder / table, stored["paths"], y, fold, proba)
        threshold = youden_threshold(y, proba)
        entry = {"onnx_torch_max_diff": parity, "cv": scores(y, proba, threshold),
                 "worst_stressed_auc": result["worst_auc"], "picked": recipe == results["picked"]}
        if site is not None:
            classifier = OnnxCNNClassifier(model_path=str(onnx_path), image_size=224)
            p_site = classifier.predict_proba(site_images)[:, 1]
            write_site_predictions(args.oof_dir / "site_val" / table, site, args.data, p_site)
            entry["site_val"] = scores(site.labels, p_site, threshold)
            log_site_val_look(f"cnn_{args.run.name}_{recipe} (finetune_224, pure CNN)",
                              entry["cv"], entry["site_val"])
        report[recipe] = entry
        print(json.dumps({recipe: entry}), flush=True)
    (args.run / "export.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
