"""Static int8 quantization of a packaged CNN, for a faster scoring path.

    python experiments/quantize_cnn.py --data ../shared/data/kermany \\
        xray_features/models/cnn_ft224_cs_acq_cs.onnx xray_features/models/cnn_ft224_cs_acq_cs.int8.onnx

onnxruntime's static quantization in QDQ format: int8 weights per output
channel, uint8 activations whose ranges are calibrated (MinMax) on real
preprocessed training films, after `quant_pre_process`. The calibration set
is fixed: every 81st file of train/ in sorted path order, 64 films (NORMAL and
PNEUMONIA, never site_val), preprocessed as the network's
``.preprocess.json`` says; the sidecar is copied beside the output. The
result is deterministic (the same sha256 on a rerun). It prints the speed
and the probability error against fp32 on 48 other training films; the
accuracy cost on whole sets is measured by ``--measure`` (docs/performance.md).
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
from xray_features.cnn import OnnxCNNScore, prepare_batch

CALIBRATION_STEP, CALIBRATION_N = 81, 64


def calibration_paths(data_dir):
    """The fixed calibration films: every 81st train/ file in sorted order."""
    paths = sorted(str(p) for p in (Path(data_dir) / "train").rglob("*.jpeg"))
    return paths[::CALIBRATION_STEP][:CALIBRATION_N]


def quantize(source, out, data_dir, batch_size=8):
    """Write the static int8 version of the ONNX CNN ``source`` to ``out``."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = extract_preprocessed(calibration_paths(data_dir), cnn_preprocessor(source))
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
                        weight_type=QuantType.QInt8)
    sidecar = Path(source).with_suffix(".preprocess.json")
    shutil.copy(sidecar, Path(str(out).removesuffix(".onnx") + ".preprocess.json"))


def compare(source, out, data_dir, n=48):
    """ms per film of both files, and the largest probability difference."""
    paths = sorted(str(p) for p in (Path(data_dir) / "train").rglob("*.jpeg"))[5::97][:n]
    images = extract_preprocessed(paths, cnn_preprocessor(source))
    result = {}
    for name, path in (("fp32", source), ("int8", out)):
        score = OnnxCNNScore(model_path=str(path))
        score.transform(images[:8])
        best = min(_timed(score, images) for _ in range(3))
        result[name] = {"ms_per_image": 1000 * best / len(images), "p": score.transform(images)}
    diff = np.abs(result["int8"]["p"] - result["fp32"]["p"])
    return {"fp32_ms": result["fp32"]["ms_per_image"], "int8_ms": result["int8"]["ms_per_image"],
            "max_abs_dp": float(diff.max()), "median_abs_dp": float(np.median(diff))}


def measure(source, out, data_dir, model_path, eval_dir=None):
    """What the user sees: each set's films scored by the saved model
    ``model_path`` (its calibration and threshold) with the fp32 network and
    with ``out`` in its place: AUC of each, largest probability change, and how
    many decisions change. Sets: all of train/ (the final network saw them:
    in-sample) and ``eval_dir`` if given."""
    from pipelines.metrics import auc
    from pipelines.persist import load_model
    from xray_features.dataset import index_dataset

    model, _ = load_model(model_path)
    decision = model.steps[-1][1]
    sets = {"train (in-sample)": index_dataset(data_dir).subset("train")}
    if eval_dir:
        sets[str(eval_dir)] = index_dataset(eval_dir)
    figures = {}
    for name, index in sets.items():
        images = extract_preprocessed(index.paths, cnn_preprocessor(source))
        p = {kind: decision.predict_proba(OnnxCNNScore(model_path=str(path)).transform(images))[:, 1]
             for kind, path in (("fp32", source), ("int8", out))}
        y = np.asarray(index.labels)
        changed = (p["fp32"] >= decision.threshold_) != (p["int8"] >= decision.threshold_)
        figures[name] = {"n": len(y), "auc_fp32": auc(y, p["fp32"]), "auc_int8": auc(y, p["int8"]),
                         "max_abs_dp": float(np.max(np.abs(p["int8"] - p["fp32"]))),
                         "decisions_changed": int(changed.sum())}
    return figures


def _timed(score, images):
    started = time.perf_counter()
    score.transform(images)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--data", default="../shared/data/kermany")
    parser.add_argument("--measure", metavar="MODEL", default=None,
                        help="also score train/ (and --eval-dir) with this saved model, its "
                        "network in fp32 and in int8, and print the AUCs and changed decisions")
    parser.add_argument("--eval-dir", default=None)
    args = parser.parse_args(argv)
    quantize(args.source, args.out, args.data)
    figures = compare(args.source, args.out, args.data)
    print(f"wrote {args.out}: {figures['int8_ms']:.2f} ms/film against {figures['fp32_ms']:.2f} "
          f"(fp32, same run); |P(int8) - P(fp32)| max {figures['max_abs_dp']:.4f}, median "
          f"{figures['median_abs_dp']:.5f} on 48 other training films")
    if args.measure:
        for name, f in measure(args.source, args.out, args.data, args.measure,
                               args.eval_dir).items():
            print(f"{name}: {f['n']} films, AUC fp32 {f['auc_fp32']:.4f} int8 {f['auc_int8']:.4f}, "
                  f"max |dP| {f['max_abs_dp']:.4f}, {f['decisions_changed']} decisions changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
