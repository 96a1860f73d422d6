"""What the study scripts share: their common options, the train/ folds, the
site_val log and the JSON results."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

from pipelines.metrics import binary_metrics
from pipelines.run import default_cache_dir
from xray_features import index_dataset, make_folds

LOG = Path(__file__).resolve().parent / "site_val_log.md"
TABLE_HEADER = ("| when (UTC) | config | CV AUC | CV acc | CV sens | CV spec | threshold "
                "| site AUC | site acc | site sens | site spec |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|\n")


def study_parser(doc, out=None, site_val=True):
    """Options every study takes: --data, --cache-dir, and --out (a JSON file,
    when ``out`` gives its default) and --site-val (when ``site_val``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--cache-dir", default=default_cache_dir())
    if out is not None:
        parser.add_argument("--out", type=Path, default=Path(out))
    if site_val:
        parser.add_argument("--site-val", action="store_true",
                            help="score site_val once per model and log it "
                            "(experiments/site_val_log.md)")
    return parser


def train_site_folds(data):
    """train/, site_val/ and the pipelines' folds (5, patient-grouped, seed 0)."""
    index = index_dataset(data)
    train = index.subset("train")
    site = index.subset("site_val") if "site_val" in index.splits else None
    return train, site, make_folds(train.labels, train.groups, n_splits=5, seed=0)


def headline(metrics):
    """AUC, accuracy, sensitivity and specificity, rounded for the JSON report."""
    return {k: round(metrics[k], 4) for k in ("auc", "accuracy", "sensitivity", "specificity")}


class Results(dict):
    """A study's results: each is printed as a JSON line when added, all are saved at the end."""

    def add(self, name, result):
        self[name] = result
        print(json.dumps({name: result}), flush=True)

    def save(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self, indent=2))


def site_val_look(result, name, cv, labels, scores, threshold):
    """Score site_val once at the train-chosen ``threshold``: add its headline
    to ``result`` and log the look."""
    sv = binary_metrics(labels, scores, threshold)
    result["site_val"] = headline(sv)
    log_row(name, cv, sv)


def log_row(name, cv, sv):
    """Append one site_val look to `LOG` (``cv`` holds the threshold too)."""
    text = LOG.read_text() if LOG.exists() else ""
    with open(LOG, "a") as handle:
        if not text:
            handle.write("# Every configuration evaluated on site_val\n\n"
                         "Appended by the studies in experiments/; one row per look.\n")
        lines = text.rstrip().splitlines()
        if not lines or not lines[-1].startswith("|"):  # prose last: open a new table
            handle.write("\n" + TABLE_HEADER)
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        handle.write(f"| {when} | {name} | {cv['auc']:.4f} | {cv['accuracy']:.3f} | "
                     f"{cv['sensitivity']:.3f} | {cv['specificity']:.3f} | {cv['threshold']:.3f} | "
                     f"{sv['auc']:.4f} | {sv['accuracy']:.3f} | {sv['sensitivity']:.3f} | "
                     f"{sv['specificity']:.3f} |\n")
