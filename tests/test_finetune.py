"""The 224-px fine-tuning study (experiments/finetune_224.py, finetune_export.py,
stress.py): the torch rebuild of the shipped embedder, the augmentations, and
one tiny end-to-end run on synthetic images. Needs the train extra (torch)."""

import json

import numpy as np
import pytest

from .conftest import make_synthetic_set, phantom
from pipelines.decision import mean_logit
from pipelines.metrics import youden_threshold
from xray_features.cnn import OnnxCNNClassifier, OnnxEmbedder
from xray_features.io import read_xray
from xray_features.preprocess import default_preprocessor

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
import finetune_224  # noqa: E402
import finetune_export  # noqa: E402
import stress  # noqa: E402
from train_cnn import augment  # noqa: E402


def normalised(images):
    x = np.repeat(((np.asarray(images) * 255 - 127) / 128)[:, None], 3, axis=1)
    return torch.from_numpy(x.astype(np.float32))


def test_torch_rebuild_matches_shipped_embedder():
    images = np.stack([phantom(224, seed=i) for i in range(3)])
    with torch.no_grad():
        rebuilt = finetune_224.OnnxLite0().eval()(normalised(images)).numpy()
    shipped = OnnxEmbedder().transform(images)
    assert rebuilt.shape == (3, 1280)
    assert np.abs(rebuilt - shipped).max() < 1e-4


def test_same_pad_is_tensorflow_same():
    x = torch.zeros(1, 1, 224, 224)
    assert finetune_224.same_pad(x, 3, 2).shape[-2:] == (225, 225)  # (0, 1) on each axis
    assert finetune_224.same_pad(x, 5, 1).shape[-2:] == (228, 228)  # (2, 2)
    odd = finetune_224.same_pad(torch.ones(1, 1, 7, 7), 3, 2)
    assert odd.shape[-2:] == (9, 9) and odd[0, 0, 0].sum() == 0 and odd[0, 0, -1].sum() == 0


def test_counter_squash_stretch():
    labels = torch.tensor([0.0, 1.0] * 500)
    stretch = finetune_224.counter_squash_stretch(labels, torch.Generator().manual_seed(0))
    f = finetune_224.NORMAL_TO_PNEUMONIA_ASPECT
    chosen = (stretch != 1).all(1)
    assert ((stretch == 1).all(1) | chosen).all()
    assert 0.45 < chosen.float().mean() < 0.55
    normal, pneumonia = chosen & (labels == 0), chosen & (labels == 1)
    for rows, expected in ((normal, [f, f * f]), (pneumonia, [f * f, f])):
        torch.testing.assert_close(stretch[rows], torch.tensor(expected).expand(int(rows.sum()), 2))


def square_extent(image):
    """Height and width of the bright square in an augmented image."""
    mask = image[0] > 0.5
    return int(mask.any(1).sum()), int(mask.any(0).sum())


def test_augment_stretch_magnifies_each_axis():
    x = torch.zeros(2, 1, 96, 96)
    x[:, :, 32:64, 32:64] = 1.0
    stretch = torch.tensor([[1.5, 1.0], [1.0, 1.5]])
    out = augment(x, torch.Generator().manual_seed(0), zoom=(1.0, 1.0), stretch=stretch)
    (h0, w0), (h1, w1) = square_extent(out[0]), square_extent(out[1])
    assert w0 > 1.35 * h0 and h1 > 1.35 * w1  # the rotation (+-10 deg) blurs the edges a little
    same = augment(x, torch.Generator().manual_seed(1), stretch=torch.ones(2, 2))
    torch.testing.assert_close(same, augment(x, torch.Generator().manual_seed(1)))


def test_random_acquisition_is_seeded_and_in_range():
    film = phantom(128, seed=3)
    one = stress.random_acquisition(film, np.random.default_rng(7))
    again = stress.random_acquisition(film, np.random.default_rng(7))
    other = stress.random_acquisition(film, np.random.default_rng(8))
    np.testing.assert_array_equal(one, again)
    assert one.shape == film.shape and one.dtype == np.float32
    assert one.min() >= 0 and one.max() <= 1
    assert not np.allclose(one, film, atol=1e-3) and not np.allclose(one, other, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One recipe (acquisition views + counter-squash), one epoch, on 24 films."""
    data = make_synthetic_set(tmp_path_factory.mktemp("ft_data"), n_per_class=12, split="train")
    out = tmp_path_factory.mktemp("ft_run")
    assert finetune_224.main(["--data", str(data), "--out", str(out), "--recipes", "acq_cs",
                              "--epochs", "1", "--batch-size", "8", "--save-folds"]) == 0
    return data, out


def test_finetune_run_outputs(tiny_run):
    data, out = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert results["picked"] == "acq_cs" and results["torch_onnx_parity"] < 1e-4
    recipe = results["recipes"]["acq_cs"]
    assert set(recipe["stress"]) == set(stress.STRESS) | {"countersquash"}
    stressed = [s["auc"] for s in recipe["stress"].values()]
    assert recipe["worst_auc"] == min([recipe["cv"]["auc"]] + stressed)
    stored = np.load(out / "oof.npz")
    assert sorted(np.unique(stored["fold"])) == [0, 1, 2, 3, 4]
    assert stored["embeddings"].shape == (24, 1280) and np.isfinite(stored["proba_acq_cs"]).all()
    assert all((data / p).is_file() for p in stored["paths"])
    # the pipelines' Youden rule, so pipelines.run finds the same threshold
    assert recipe["cv"]["threshold"] == youden_threshold(stored["y"], stored["proba_acq_cs"])


def test_export_matches_torch_and_writes_tables(tiny_run, tmp_path):
    data, out = tiny_run
    assert finetune_export.main([str(out), "--data", str(data), "--oof-dir", str(tmp_path)]) == 0
    table = tmp_path / f"cnn_{out.name}_acq_cs.csv"
    rows = table.read_text().splitlines()
    assert rows[0] == "path,label,fold,proba" and len(rows) == 25
    model = finetune_export.load(out / "final_acq_cs.pt")
    images = np.stack([phantom(224, seed=i) for i in range(4)])
    with torch.no_grad():
        embedding = model.embed(normalised(images))
        expected = torch.sigmoid(model.fc(embedding).squeeze(1)).numpy()
    onnx_path = str(out / "acq_cs.onnx")
    for k in range(5):  # the fp16 fold models, widened and exported
        weights = torch.load(out / f"fold{k}_acq_cs.pt")
        assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
        assert (out / f"fold{k}_acq_cs.onnx").is_file()
    stored = np.load(out / "oof.npz")
    held_out = stored["fold"] == 0
    films = [read_xray(data / p) for p in stored["paths"][held_out]]
    rescored = OnnxCNNClassifier(model_path=str(out / "fold0_acq_cs.onnx"), image_size=224)
    got = rescored.predict_proba(default_preprocessor().fit_transform(films))[:, 1]
    np.testing.assert_allclose(got, stored["proba_acq_cs"][held_out], atol=2e-3)  # fp16 weights
    got = OnnxCNNClassifier(model_path=onnx_path, image_size=224).predict_proba(images)[:, 1]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(OnnxEmbedder(model_path=onnx_path).transform(images),
                               embedding.numpy(), atol=1e-4)


def test_hybrid_study_cross_fits_on_the_saved_fold_models(tiny_run, tmp_path):
    import finetuned224_study

    data, out = tiny_run
    assert finetune_export.main([str(out), "--data", str(data), "--oof-dir", str(tmp_path)]) == 0
    report = tmp_path / "study.json"
    assert finetuned224_study.main(["--run", str(out), "--data", str(data), "--out", str(report),
                                    "--cache-dir", str(tmp_path / "cache")]) == 0
    results = json.loads(report.read_text())
    name = "hog+ft224_acq_cs/logreg-countersquash-zoom (cross-fitted)"
    assert set(results) == {name, "ensemble hybrid+ft224_acq_cs"}
    for result in results.values():
        assert 0 <= result["cv"]["auc"] <= 1 and "site_val" not in result


def test_seed_study_ensembles_the_runs_out_of_fold(tiny_run, tmp_path):
    import seed_study

    data, out = tiny_run
    report = tmp_path / "seeds.json"
    assert seed_study.main([str(out), str(out), "--data", str(data), "--out", str(report)]) == 0
    results = json.loads(report.read_text())
    p = np.load(out / "oof.npz")["proba_acq_cs"]
    ensemble = results["ensemble of 2 seeds"]
    np.testing.assert_allclose(mean_logit([p, p]), p, atol=1e-6)  # one run twice: itself
    assert ensemble["threshold"] == round(youden_threshold(np.load(out / "oof.npz")["y"], p), 4)
    assert ensemble["cv_vs_first_seed"]["diff"] == pytest.approx(0, abs=1e-9)
    assert results["seed spread"]["cv_auc_sd"] == 0


def test_shift_attribution_splits_the_cross_fitted_head_exactly(tiny_run, tmp_path):
    import shift_attribution_study as study
    from pipelines.assemble import make_head

    data, out = tiny_run
    assert finetune_export.main([str(out), "--data", str(data), "--oof-dir", str(tmp_path)]) == 0
    from xray_features import index_dataset, make_folds

    train = index_dataset(data).subset("train")
    folds = make_folds(train.labels, train.groups, n_splits=5, seed=0)
    blocks, final_model = study.finetuned_blocks(out, train, folds, str(tmp_path / "cache"))
    assert len(blocks) == 6 and final_model.name == "acq_cs.onnx"
    X, copies = blocks[-1]
    assert X.shape[1] == study.HOG_GRID ** 2 * study.HOG_PER_BLOCK + 1280 and len(copies) == 2
    head = study.fit_with_copies(make_head("logreg"), X, train.labels, copies)
    terms = study.logit_terms(head, X)  # the logit is the terms' sum plus the intercept
    np.testing.assert_allclose(terms.sum(axis=1) + head[-1].intercept_[0],
                               head.decision_function(X), rtol=1e-6, atol=1e-6)
    report = tmp_path / "shift.json"
    assert study.main(["--run", str(out), "--data", str(data), "--out", str(report),
                       "--cache-dir", str(tmp_path / "cache")]) == 0
    results = json.loads(report.read_text())
    by_block = results["train (out of fold) AUC of each block's terms"]
    assert set(by_block) == {"hog", "cnn", "both"} and all(0 <= v <= 1 for v in by_block.values())


def test_logit_stack_uses_each_models_own_final_layer(tiny_run, tmp_path):
    import logit_stack_study as study

    data, out = tiny_run
    assert finetune_export.main([str(out), "--data", str(data), "--oof-dir", str(tmp_path)]) == 0
    model = out / "fold2_acq_cs.onnx"
    images = np.stack([phantom(224, seed=i) for i in range(3)])
    embedding = OnnxEmbedder(model_path=str(model)).transform(images)
    proba = OnnxCNNClassifier(model_path=str(model)).predict_proba(images)[:, 1]
    np.testing.assert_allclose(1 / (1 + np.exp(-study.logits(study.final_layer(model), embedding))), proba,
                               atol=1e-5)
    from xray_features import index_dataset, make_folds

    train = index_dataset(data).subset("train")
    folds = make_folds(train.labels, train.groups, n_splits=5, seed=0)
    fold_models = [out / f"fold{k}_acq_cs.onnx" for k in range(5)]
    oof, oof_copies = study.out_of_fold_logits(fold_models, train, folds, str(tmp_path / "cache"))
    stored = np.load(out / "oof.npz")  # each film's probability from the model that never saw it
    np.testing.assert_allclose(1 / (1 + np.exp(-oof)), stored["proba_acq_cs"], atol=2e-3)
    assert len(oof_copies) == 2 and all(np.isfinite(c).all() for c in oof_copies)
    report = tmp_path / "stack.json"
    assert study.main(["--run", str(out), "--data", str(data), "--out", str(report),
                       "--cache-dir", str(tmp_path / "cache")]) == 0
    (result,) = json.loads(report.read_text()).values()
    assert 0 <= result["cv"]["auc"] <= 1 and "site_val" not in result
