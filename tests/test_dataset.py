import numpy as np
import pytest

from xray_features.dataset import (find_duplicates, fold_of, index_dataset, make_folds,
                                   patient_id_from_name)

from .conftest import phantom, write_image


@pytest.mark.parametrize("name, patient, subtype", [
    ("IM-0001-0001.jpeg", "IM-0001", "normal"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427", "normal"),
    ("person12_bacteria_45.jpeg", "person12_bacteria", "bacteria"),
    ("person12_virus_45.jpeg", "person12_virus", "virus"),
])
def test_patient_rules(name, patient, subtype):
    assert patient_id_from_name(name) == (patient, subtype, True)


def test_bacteria_and_virus_of_one_person_number_are_different_patients():
    a = patient_id_from_name("person3_bacteria_1.jpeg")[0]
    b = patient_id_from_name("person3_virus_1.jpeg")[0]
    assert a != b


def test_unmatched_name_is_its_own_patient():
    assert patient_id_from_name("scan 7.png") == ("scan 7", None, False)


def test_kaggle_tree_indexes(kaggle_tree):
    index = index_dataset(kaggle_tree)
    assert index.counts() == {"train": {"NORMAL": 3, "PNEUMONIA": 4},
                              "test": {"NORMAL": 1, "PNEUMONIA": 1}}
    train = index.subset("train")
    assert sorted(set(train.groups)) == sorted(
        ["IM-0001", "NORMAL2-IM-0007", "person1_bacteria", "person1_virus", "odd name"])
    assert train.n_fallback_patients == 1
    by_name = {r.path.rsplit("/", 1)[1]: r for r in train.records}
    assert by_name["person1_virus_2.jpeg"].subtype == "virus"
    assert by_name["person1_virus_2.jpeg"].label == 1
    assert by_name["IM-0001-0002.jpeg"].label == 0
    assert list(index.paths) == sorted(index.paths)


def test_flat_layout(tmp_path):
    write_image(tmp_path / "NORMAL" / "IM-0002-0001.png", phantom(64))
    write_image(tmp_path / "PNEUMONIA" / "person2_virus_1.png", phantom(64, seed=1))
    (tmp_path / "PNEUMONIA" / "notes.txt").write_text("not an image")
    index = index_dataset(tmp_path)
    assert len(index) == 2
    assert index.splits == ["all"]
    assert list(index.labels) == [0, 1]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="NORMAL"):
        index_dataset(tmp_path)


def test_duplicates_by_content(tmp_path):
    a = write_image(tmp_path / "a.png", phantom(64, seed=1))
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    c = write_image(tmp_path / "c.png", phantom(64, seed=2))
    assert find_duplicates([a, b, c]) == [[str(a), str(b)]]


def _toy_labels_groups(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for patient in range(n_patients):
        for _ in range(rng.integers(1, 5)):
            groups.append(f"p{patient}")
            labels.append(patient % 3 == 0)
    return np.array(labels, int), np.array(groups)


def test_folds_are_grouped_stratified_and_deterministic():
    labels, groups = _toy_labels_groups()
    folds = make_folds(labels, groups, n_splits=5, seed=3)
    again = make_folds(labels, groups, n_splits=5, seed=3)
    for (tr, te), (tr2, te2) in zip(folds, again):
        np.testing.assert_array_equal(te, te2)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests) == list(range(len(labels)))  # a partition
    overall = labels.mean()
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert abs(labels[test].mean() - overall) < 0.15
    other = make_folds(labels, groups, n_splits=5, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


@pytest.mark.data
def test_real_train_split_counts_and_no_patient_leak(data_root):
    index = index_dataset(data_root)
    counts = index.counts()
    assert counts["train"] == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert counts["site_val"] == {"NORMAL": 118, "PNEUMONIA": 190}
    train, site = index.subset("train"), index.subset("site_val")
    assert not set(train.groups) & set(site.groups)
    assert index.n_fallback_patients == 0


def test_fold_of_names_the_fold_that_tests_each_sample():
    labels = np.repeat([0, 1], 20)
    groups = np.arange(40) // 2
    folds = make_folds(labels, groups, n_splits=4, seed=0)
    fold = fold_of(folds, 40)
    assert sorted(set(fold)) == [0, 1, 2, 3]
    for k, (train, test) in enumerate(folds):
        assert (fold[test] == k).all() and (fold[train] != k).all()
