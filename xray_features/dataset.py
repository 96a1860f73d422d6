"""Index a folder of labelled chest X-rays and split it by patient.

Layouts: ``<root>/<split>/<LABEL>/*`` (Kaggle) or ``<root>/<LABEL>/*`` (flat),
with LABEL in {NORMAL, PNEUMONIA}, or the three-class folders NORMAL, BACTERIAL
and VIRAL (BACTERIAL and VIRAL images are labelled PNEUMONIA). Patient ids
follow the data README:

- ``IM-0001-0001.jpeg`` -> ``IM-0001``; ``NORMAL2-IM-0012-0001.jpeg`` -> ``NORMAL2-IM-0012``;
- ``person12_bacteria_45.jpeg`` -> ``person12_bacteria`` (person numbers are
  counted per subtype, so ``person12_virus`` is another patient);
- any other name is its own patient (its file stem), and is counted.

Every record also has a subtype (``normal``, ``bacteria``, ``virus``, or
``unknown``) for the three-class task (`SUBTYPES`): NORMAL images are
``normal``; a pneumonia image takes its subtype from its file name
(``personN_bacteria_K``, ``personN_virus_K``) or its BACTERIAL/VIRAL folder.
When neither tells it (a PNEUMONIA/ file with another name), or the two
disagree, it is ``unknown``: `DatasetIndex.unknown_subtypes` names those files,
nothing guesses.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .hashing import file_sha256

__all__ = [
    "LABELS", "SUBTYPES", "SUBTYPE_FOLDERS", "IMAGE_SUFFIXES", "ImageRecord", "DatasetIndex", "index_dataset",
    "patient_id_from_name", "find_duplicates", "make_folds", "fold_of", "file_sha256",
]

LABELS = {"NORMAL": 0, "PNEUMONIA": 1}
# the three classes of the subtype task, in class-index order, and each one's record subtype
SUBTYPES = {"NORMAL": "normal", "BACTERIAL": "bacteria", "VIRAL": "virus"}
# folders of the three-class layout holding pneumonia images, and the subtype each tells
SUBTYPE_FOLDERS = {"BACTERIAL": "bacteria", "VIRAL": "virus"}
_LABEL_FOLDERS = {**LABELS, **{name: LABELS["PNEUMONIA"] for name in SUBTYPE_FOLDERS}}
_SUBTYPE_CODES = {subtype: code for code, subtype in enumerate(SUBTYPES.values())}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom"}

_NORMAL_RE = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)
_PNEUMONIA_RE = re.compile(r"^(person\d+_(bacteria|virus))_\d+", re.IGNORECASE)


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image: label is 0 (normal) or 1 (pneumonia); subtype is
    ``normal``, ``bacteria``, ``virus`` or ``unknown``."""

    path: str
    label: int
    subtype: str
    patient_id: str
    split: str
    patient_from_rule: bool = True

    @property
    def subtype_label(self):
        """The class index in `SUBTYPES` (0 normal, 1 bacterial, 2 viral), -1 if unknown."""
        return _SUBTYPE_CODES.get(self.subtype, -1)


def patient_id_from_name(filename):
    """Return ``(patient_id, subtype_or_None, matched_a_rule)`` for a file name."""
    stem = Path(filename).stem
    match = _PNEUMONIA_RE.match(stem)
    if match:
        return match.group(1).lower(), match.group(2).lower(), True
    match = _NORMAL_RE.match(stem)
    if match:
        return match.group(1).upper(), "normal", True
    return stem, None, False


class DatasetIndex:
    """An ordered list of `ImageRecord` with array views for sklearn."""

    def __init__(self, records, root=None):
        self.records = list(records)
        self.root = None if root is None else str(root)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        return self.records[item]

    @property
    def paths(self):
        """Every record's file path, in index order."""
        return np.array([r.path for r in self.records], dtype=object)

    @property
    def labels(self):
        """Every record's label: 0 NORMAL, 1 PNEUMONIA."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def groups(self):
        """Every record's patient id (the CV groups)."""
        return np.array([r.patient_id for r in self.records], dtype=object)

    @property
    def subtype_labels(self):
        """Class indices in `SUBTYPES` (0 NORMAL, 1 BACTERIAL, 2 VIRAL); -1 where unknown."""
        return np.array([r.subtype_label for r in self.records], dtype=np.int64)

    @property
    def unknown_subtypes(self):
        """Paths of the images whose subtype cannot be told (see the module docstring)."""
        return [r.path for r in self.records if r.subtype_label < 0]

    def subtype_counts(self):
        """``{"NORMAL": n, "BACTERIAL": n, "VIRAL": n, "unknown": n}`` over all records."""
        codes = self.subtype_labels
        counts = {name: int((codes == k).sum()) for k, name in enumerate(SUBTYPES)}
        counts["unknown"] = int((codes < 0).sum())
        return counts

    @property
    def splits(self):
        """The split names present (``train``, ``site_val``, ...), sorted."""
        return sorted({r.split for r in self.records})

    @property
    def n_fallback_patients(self):
        """How many files fit no patient-id rule and are their own patient."""
        return sum(not r.patient_from_rule for r in self.records)

    def subset(self, split):
        """The records of one split, as a new index on the same root."""
        return DatasetIndex([r for r in self.records if r.split == split], self.root)

    def take(self, indices):
        """The records at ``indices``, as a new index on the same root."""
        return DatasetIndex([self.records[i] for i in indices], self.root)

    def counts(self):
        """``{split: {"NORMAL": n, "PNEUMONIA": n}}``."""
        table = defaultdict(lambda: {"NORMAL": 0, "PNEUMONIA": 0})
        for r in self.records:
            table[r.split]["PNEUMONIA" if r.label else "NORMAL"] += 1
        return dict(table)

    def summary(self):
        """One line: each split's NORMAL and PNEUMONIA counts, patients, unmatched names."""
        parts = [
            f"{split}: {c['NORMAL']} NORMAL + {c['PNEUMONIA']} PNEUMONIA"
            for split, c in sorted(self.counts().items())
        ]
        n_patients = len(set(self.groups))
        return (
            "; ".join(parts)
            + f"; {n_patients} patients; {self.n_fallback_patients} files fit no patient rule"
        )


def index_dataset(root, splits=None):
    """Index ``root`` in the Kaggle or the flat layout.

    Parameters
    ----------
    root : path
        A folder holding ``NORMAL``/``PNEUMONIA`` (or ``BACTERIAL``/``VIRAL``)
        folders, or split folders of them.
    splits : iterable of str, optional
        Keep only these splits (Kaggle layout).

    Returns
    -------
    DatasetIndex
        Records sorted by path. The split is ``"all"`` in the flat layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if any((root / label).is_dir() for label in _LABEL_FOLDERS):
        split_dirs = {"all": root}
    else:
        split_dirs = {
            d.name: d for d in sorted(root.iterdir())
            if d.is_dir() and any((d / label).is_dir() for label in _LABEL_FOLDERS)
        }
    if splits is not None:
        split_dirs = {name: d for name, d in split_dirs.items() if name in set(splits)}
    if not split_dirs:
        raise FileNotFoundError(
            f"no NORMAL/ or PNEUMONIA/ folders under {root} (expected <root>/<split>/<LABEL>/ "
            "or <root>/<LABEL>/, LABEL one of NORMAL, PNEUMONIA, BACTERIAL, VIRAL)"
        )
    records = []
    for split, split_dir in split_dirs.items():
        for label_name, label in _LABEL_FOLDERS.items():
            for path in _image_files(split_dir / label_name):
                patient, subtype, from_rule = patient_id_from_name(path.name)
                subtype = _record_subtype(label, subtype, SUBTYPE_FOLDERS.get(label_name))
                records.append(ImageRecord(str(path), label, subtype, patient, split, from_rule))
    records.sort(key=lambda r: r.path)
    return DatasetIndex(records, root)


def _record_subtype(label, from_name, from_folder):
    """The record's subtype from its label, its file name's and its folder's subtype."""
    if label == 0:
        return "normal"
    told = {s for s in (from_name, from_folder) if s in ("bacteria", "virus")}
    return told.pop() if len(told) == 1 else "unknown"


def _image_files(folder):
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def find_duplicates(paths):
    """Groups (lists of paths, size >= 2) of files with identical bytes."""
    by_hash = defaultdict(list)
    for path in paths:
        by_hash[file_sha256(path)].append(os.fspath(path))
    return [group for group in by_hash.values() if len(group) > 1]


def make_folds(labels, groups, n_splits=5, seed=0):
    """Deterministic patient-grouped, label-stratified folds.

    Every comparison in the project uses this function, so models scored on
    the same ``seed`` see exactly the same folds.

    Returns
    -------
    list of (train_indices, test_indices)
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    placeholder = np.zeros((len(labels), 1))
    return [
        (np.sort(train), np.sort(test))
        for train, test in splitter.split(placeholder, labels, groups)
    ]



def fold_of(folds, n_samples):
    """The fold number of each sample: the fold whose test part holds it."""
    out = np.full(n_samples, -1, dtype=int)
    for k, (_, test) in enumerate(folds):
        out[test] = k
    return out
