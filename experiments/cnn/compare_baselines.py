"""The pure-CNN baselines side by side: AUC with 95 % CIs and paired differences.

    python experiments/cnn/compare_baselines.py                      # against small64_noaug
    python experiments/cnn/compare_baselines.py --reference cnn_lite0_128_aug_e3
    python experiments/cnn/compare_baselines.py --cv-only            # train/ out of fold only

Reads the prediction tables `train_cnn.py` wrote and that were copied to
`xray_features/models/oof/` (out-of-fold on train/) and `xray_features/models/oof/site_val/`
(the final model on site_val: saved scores of looks already logged, no new
look). CIs and differences come from a patient-level bootstrap (1,000
resamples), paired between runs on the same images. Prints a JSON line per
table and writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from pipelines.baselines import OOF_DIR, read_oof
from pipelines.metrics import auc, bootstrap_ci, paired_bootstrap_auc
from xray_features import index_dataset


def load(table_path, patient_of, order=None):
    """(paths, labels, patients, probabilities) of one table, in ``order`` if given."""
    table = read_oof(table_path)
    paths = order if order is not None else sorted(table)
    y = np.array([table[p][0] for p in paths])
    proba = np.array([table[p][2] for p in paths])
    return paths, y, np.array([patient_of[p] for p in paths]), proba


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--reference", default="cnn_small64_noaug")
    parser.add_argument("--cv-only", action="store_true", help="leave out the site_val tables")
    parser.add_argument("--out", type=Path, default=Path("runs/compare_baselines.json"))
    args = parser.parse_args(argv)
    index = index_dataset(args.data)
    patient_of = {os.path.relpath(r.path, index.root): g for r, g in zip(index.records, index.groups)}
    results = {}
    parts = [("cv", OOF_DIR)] + ([] if args.cv_only else [("site_val", OOF_DIR / "site_val")])
    for part, folder in parts:
        reference = folder / f"{args.reference}.csv"
        paths, y, patients, p_ref = load(reference, patient_of)
        for table in sorted(folder.glob("cnn_*.csv")):
            _, _, _, p = load(table, patient_of, paths)
            row = {"auc": round(auc(y, p), 4),
                   "ci": [round(c, 4) for c in bootstrap_ci(y, p, patients)["auc"]], "n": len(y)}
            if table != reference:
                test = paired_bootstrap_auc(y, p, p_ref, patients, n_boot=1000, seed=0)
                row[f"minus_{args.reference}"] = {"diff": round(test["diff"], 4),
                                                  "ci": [round(c, 4) for c in test["ci"]]}
            results[f"{part}/{table.stem}"] = row
            print(json.dumps({f"{part}/{table.stem}": row}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
