"""The 224-px fine-tuning study (experiments/cnn/finetune_224.py, finetune_export.py,
stress.py): the torch rebuild of the shipped embedder, the augmentations, and
one tiny end-to-end run on synthetic images. Needs the train extra (torch)."""

import json

import numpy as np
import pytest

from .conftest import make_synthetic_set, phantom
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
