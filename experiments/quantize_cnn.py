"""Static int8 quantization of a packaged CNN, for a faster scoring path.

    python experiments/quantize_cnn.py xray_features/models/cnn_ft224_cs_acq_cs.onnx \\
        xray_features/models/cnn_ft224_cs_acq_cs.int8.onnx \\
        --package xray_features/models/default_pipeline_fp32.joblib \\
                  xray_features/models/default_pipeline.joblib
    python experiments/quantize_cnn.py xray_features/models/efficientnet_lite0_embedder.onnx \\
        xray_features/models/efficientnet_lite0_embedder.int8.onnx

onnxruntime's static quantization in QDQ format: int8 weights per output
channel, uint8 activations whose ranges are calibrated on real preprocessed
training films (the 99.999th percentile of each activation's histogram), after
`quant_pre_process`. The global pooling and everything after it (the
embedding, the classifier's ``Gemm``, ``Sigmoid``) stay in float: quantizing
the output to 8 bits leaves about 90 distinct probabilities over 5,216 films
and ties that cost AUC (`tail_nodes`). The calibration set is fixed: every
81st file of train/ in sorted path order, 64 films (NORMAL and PNEUMONIA,
never site_val), preprocessed as the network's ``.preprocess.json`` says; the
sidecar is copied beside the output. The result is deterministic (the same
sha256 on a rerun, `tests/test_quantized.py`).

It prints the speed of both files in the same run and their difference on
every train/ film: for a classifier, the logit difference, the in-sample AUC
of both and an estimate of the cross-validated AUC (the committed out-of-fold
probabilities moved by each film's logit difference; the fold networks were
not kept); for an embedder, the cosine between embeddings. ``--measure MODEL``
also scores train/ (and ``--eval-dir``) through a saved model's calibration
and threshold with each network and counts the decisions that change.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipelines.assemble import cnn_preprocessor, extract_preprocessed
from pipelines.baselines import OOF_DIR, read_oof
from pipelines.decision import logit
from xray_features.preprocess import default_preprocessor
from pipelines.metrics import auc
from xray_features.cnn import OnnxCNNScore, OnnxEmbedder, prepare_batch
from xray_features.dataset import index_dataset

CALIBRATION_STEP, CALIBRATION_N, PERCENTILE = 81, 64, 99.999
POOLING = ("ReduceMean", "GlobalAveragePool")


def calibration_paths(data_dir):
    """The fixed calibration films: every 81st train/ file in sorted order."""
    paths = sorted(str(p) for p in (Path(data_dir) / "train").rglob("*.jpeg"))
    return paths[::CALIBRATION_STEP][:CALIBRATION_N]


def preprocessor(source):
    """A network's own preprocessing (its ``.preprocess.json``), else the
    hybrid's shared `default_preprocessor` (the embedder's)."""
    sidecar = Path(source).with_suffix(".preprocess.json")
    return cnn_preprocessor(source) if sidecar.is_file() else default_preprocessor()


def tail_nodes(model):
    """Names of the global pooling node and of every node downstream of it:
    the part of the graph kept in float."""
    pools = [node for node in model.graph.node if node.op_type in POOLING]
    if not pools:
        raise ValueError("no global pooling node (ReduceMean / GlobalAveragePool) in the graph")
    tail, produced = [], set()
    for node in model.graph.node[list(model.graph.node).index(pools[-1]):]:
        if node is pools[-1] or produced.intersection(node.input):
            tail.append(node.name)
            produced.update(node.output)
    return tail


def quantize(source, out, data_dir, batch_size=8):
    """Write the static int8 version of the ONNX CNN ``source`` to ``out``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = extract_preprocessed(calibration_paths(data_dir), preprocessor(source))
    batch = prepare_batch(list(images), images.shape[-1], 3)

    class Films(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(batch):
                return None
            self.start += batch_size
            return {"image": batch[self.start - batch_size:self.start]}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(out), Films(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        nodes_to_exclude=tail_nodes(onnx.load(str(prepared))),
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": PERCENTILE})
    sidecar = Path(source).with_suffix(".preprocess.json")
    if sidecar.is_file():
        shutil.copy(sidecar, Path(str(out).removesuffix(".onnx") + ".preprocess.json"))


def _logit(p):
    return logit(np.ravel(p), eps=1e-7)


def _ms_per_image(extractor, images, rounds=3):
    extractor.transform(images[:8])
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        extractor.transform(images)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(images)


def compare(source, out, data_dir):
    """Both files on every train/ film, in the same run: ms per film (best of
    3 on 256 films), and the difference of their outputs (see the module doc)."""
    index = index_dataset(data_dir).subset("train")
    images = extract_preprocessed(index.paths, preprocessor(source))
    is_embedder = "probability" not in _output_names(source)
    make = (lambda p: OnnxEmbedder(model_path=str(p))) if is_embedder else (
        lambda p: OnnxCNNScore(model_path=str(p)))
    figures = {f"{kind}_ms": _ms_per_image(make(path), images[:256])
               for kind, path in (("fp32", source), ("int8", out))}
    fp32, int8 = (make(path).transform(images) for path in (source, out))
    if is_embedder:
        cosine = np.sum(fp32 * int8, 1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
        figures.update(cosine_min=float(cosine.min()), cosine_median=float(np.median(cosine)))
        return figures
    y = np.asarray(index.labels)
    shift = _logit(int8) - _logit(fp32)
    figures.update(max_abs_dlogit=float(np.abs(shift).max()),
                   median_abs_dlogit=float(np.median(np.abs(shift))),
                   auc_in_sample_fp32=auc(y, fp32.ravel()), auc_in_sample_int8=auc(y, int8.ravel()))
    oof = OOF_DIR / (Path(source).stem + ".csv")
    if oof.is_file():
        rows = read_oof(oof)
        cv = _logit([rows[str(Path(p).relative_to(data_dir))][2] for p in index.paths])
        figures.update(cv_auc_fp32=auc(y, cv), cv_auc_int8_estimate=auc(y, cv + shift))
    return figures


def _output_names(path):
    import onnx

    return [output.name for output in onnx.load(str(path)).graph.output]


def measure(source, out, data_dir, model_path, eval_dir=None):
    """What the user sees: each set's films scored by the saved model
    ``model_path`` (its calibration and threshold) with the fp32 network and
    with ``out`` in its place: AUC of each, largest probability change, and how
    many decisions change. Sets: all of train/ (the final network saw them:
    in-sample) and ``eval_dir`` if given (a look at site_val: log it)."""
    from pipelines.persist import load_model

    model, _ = load_model(model_path)
    decision = model.steps[-1][1]
    sets = {"train (in-sample)": index_dataset(data_dir).subset("train")}
    if eval_dir:
        sets[str(eval_dir)] = index_dataset(eval_dir)
    figures = {}
    for name, index in sets.items():
        images = extract_preprocessed(index.paths, preprocessor(source))
        p = {kind: decision.predict_proba(OnnxCNNScore(model_path=str(path)).transform(images))[:, 1]
             for kind, path in (("fp32", source), ("int8", out))}
        y = np.asarray(index.labels)
        changed = (p["fp32"] >= decision.threshold_) != (p["int8"] >= decision.threshold_)
        figures[name] = {"n": len(y), "auc_fp32": auc(y, p["fp32"]), "auc_int8": auc(y, p["int8"]),
                         "max_abs_dp": float(np.max(np.abs(p["int8"] - p["fp32"]))),
                         "decisions_changed": int(changed.sum())}
    return figures


def package(fp32_model, network, out):
    """Save the fitted pure-CNN pipeline ``fp32_model`` with ``network`` (its
    int8 version) in place of its network, keeping its calibration and
    threshold (`pipelines.assemble.with_network`); the metadata names both."""
    from pipelines.assemble import with_network
    from pipelines.persist import load_model, save_model

    model, metadata = load_model(fp32_model)
    metadata = {key: value for key, value in metadata.items() if key not in ("format", "versions")}
    metadata.update(feature_set=f"{metadata['feature_set']}.int8", network=Path(network).name,
                    quantized_from=metadata.get("network"),
                    quantization="static int8 (experiments/quantize_cnn.py); calibration, "
                    "threshold and the cv figures are the fp32 network's")
    save_model(with_network(model, Path(network).name), out, metadata)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the fp32 ONNX network")
    parser.add_argument("out", help="where to write its int8 version")
    parser.add_argument("--data", default="../shared/data/kermany")
    parser.add_argument("--measure", metavar="MODEL", default=None,
                        help="also score train/ (and --eval-dir) with this saved model, its "
                        "network in fp32 and in int8, and print the AUCs and changed decisions")
    parser.add_argument("--eval-dir", default=None)
    parser.add_argument("--package", nargs=2, metavar=("FP32_MODEL", "OUT"), default=None,
                        help="also save the saved pure-CNN model FP32_MODEL with the int8 "
                        "network in place of its own, to OUT")
    args = parser.parse_args(argv)
    quantize(args.source, args.out, args.data)
    if args.package:
        package(*args.package, args.out)
    figures = compare(args.source, args.out, args.data)
    print(f"wrote {args.out}; on all train/ films, same run:")
    for key, value in figures.items():
        print(f"  {key:24s} {value:.5f}")
    if args.measure:
        for name, f in measure(args.source, args.out, args.data, args.measure,
                               args.eval_dir).items():
            print(f"{name}: {f['n']} films, AUC fp32 {f['auc_fp32']:.4f} int8 {f['auc_int8']:.4f}, "
                  f"max |dP| {f['max_abs_dp']:.4f}, {f['decisions_changed']} decisions changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
