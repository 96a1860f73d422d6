"""The subtype label of `xray_features.dataset` and three-class folds."""

import numpy as np
import pytest

from xray_features.dataset import SUBTYPES, index_dataset, make_folds

from .conftest import phantom, write_image


def _names(index):
    return {r.path.rsplit("/", 1)[1]: r for r in index.records}


def test_kaggle_names_give_the_subtype_and_odd_names_are_named_and_counted(kaggle_tree):
    train = index_dataset(kaggle_tree).subset("train")
    by_name = _names(train)
    assert {name: r.subtype_label for name, r in by_name.items()} == {
        "IM-0001-0001.jpeg": 0, "IM-0001-0002.jpeg": 0, "NORMAL2-IM-0007-0001.jpeg": 0,
        "person1_bacteria_1.jpeg": 1, "person1_bacteria_3.jpeg": 1, "person1_virus_2.jpeg": 2,
        "odd name.jpeg": -1}
    assert by_name["odd name.jpeg"].subtype == "unknown"
    assert [p.rsplit("/", 1)[1] for p in train.unknown_subtypes] == ["odd name.jpeg"]
    assert train.subtype_counts() == {"NORMAL": 3, "BACTERIAL": 2, "VIRAL": 1, "unknown": 1}
    np.testing.assert_array_equal(train.subtype_labels,
                                  [r.subtype_label for r in train.records])
    # the binary labels are unchanged
    assert train.counts() == {"train": {"NORMAL": 3, "PNEUMONIA": 4}}


def test_three_class_folder_layout(tmp_path):
    files = {"NORMAL": ["IM-0001-0001.png", "scan a.png"],
             "BACTERIAL": ["person1_bacteria_1.png", "film 2.png", "person5_virus_1.png"],
             "VIRAL": ["person1_virus_1.png", "film 3.png"]}
    for seed, (folder, names) in enumerate(files.items()):
        for name in names:
            write_image(tmp_path / "train" / folder / name, phantom(48, seed=seed))
    index = index_dataset(tmp_path)
    assert index.splits == ["train"]
    by_name = _names(index)
    assert {name: (r.label, r.subtype) for name, r in by_name.items()} == {
        "IM-0001-0001.png": (0, "normal"), "scan a.png": (0, "normal"),
        "person1_bacteria_1.png": (1, "bacteria"), "film 2.png": (1, "bacteria"),
        "person1_virus_1.png": (1, "virus"), "film 3.png": (1, "virus"),
        # the name says virus, the folder bacterial: not guessed
        "person5_virus_1.png": (1, "unknown")}
    assert index.unknown_subtypes == [str(tmp_path / "train" / "BACTERIAL" /
                                          "person5_virus_1.png")]
    assert index.counts() == {"train": {"NORMAL": 2, "PNEUMONIA": 5}}
    assert index.n_fallback_patients == 3  # scan a, film 2, film 3


def test_flat_three_class_layout(tmp_path):
    write_image(tmp_path / "NORMAL" / "a.png", phantom(48))
    write_image(tmp_path / "VIRAL" / "b.png", phantom(48, seed=1))
    index = index_dataset(tmp_path)
    assert index.splits == ["all"]
    assert list(index.subtype_labels) == [0, 2]
    assert list(SUBTYPES) == ["NORMAL", "BACTERIAL", "VIRAL"]


def test_folds_are_grouped_and_stratified_on_three_classes():
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for patient in range(150):
        subtype = patient % 3  # one subtype per patient, as in Kermany
        for _ in range(rng.integers(1, 5)):
            groups.append(f"p{patient}")
            labels.append(subtype)
    labels, groups = np.array(labels), np.array(groups)
    folds = make_folds(labels, groups, n_splits=5, seed=0)
    assert sorted(np.concatenate([test for _, test in folds])) == list(range(len(labels)))
    share = np.bincount(labels) / len(labels)
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        np.testing.assert_allclose(np.bincount(labels[test], minlength=3) / len(test), share,
                                   atol=0.08)


@pytest.mark.data
def test_real_train_subtypes(data_root):
    train = index_dataset(data_root).subset("train")
    assert train.subtype_counts() == {"NORMAL": 1341, "BACTERIAL": 2530, "VIRAL": 1345,
                                      "unknown": 0}
