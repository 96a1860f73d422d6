"""Export a saved pipeline to a pickle-free folder: ONNX head + JSON.

Example::

    python -m pipelines.export --model runs/latest/models/hog-xgb.joblib --out hog-xgb.onnx.d
    python -m pipelines.score xrays/ --model hog-xgb.onnx.d --out scores.csv

The folder holds ``head.onnx`` (the fitted head; logistic regression in
float64, XGBoost in float32, as each library computes), ``model.json`` (the
class and parameters of every preprocessing and feature step, the Platt
calibration, the threshold, the training metadata and the sha256 of every
other file) and, when the feature set uses ``cnn``, ``embedder.onnx`` (for a
pure-CNN model, ``cnn.onnx``, and a head that passes its probability through). Each
file is written atomically, ``model.json`` last. The exported head is checked
against the fitted one before anything is written; ``--check INPUT ...``
also compares both routes end to end on real images.

Exit codes: 0 exported; 2 bad model, unsupported head, or a failed check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from xray_features.cache import CachedExtractor
from xray_features.cnn import MODELS_DIR, OnnxCNNScore, OnnxEmbedder, file_sha256

from .decision import DecisionClassifier, ScoreHead
from .multiclass import is_multiclass, three_class_refusal
from .onnx_model import (EXPORT_FORMAT, MANIFEST, STEP_CLASSES, _is_plain, load_onnx_model,
                         platt)
from .persist import ModelFileError, atomic_write_bytes, load_model, package_versions

__all__ = ["ExportError", "export_model", "compare_routes", "HEAD_TOLERANCE", "main"]

HEAD_TOLERANCE = 1e-6  # max |P| difference between the fitted head and its ONNX
PARITY_TOLERANCE = 1e-5  # max |P| difference between the two routes, end to end


class ExportError(RuntimeError):
    """The model cannot be exported faithfully."""


def export_model(model, metadata, out_dir, check_paths=None):
    """Write ``model`` (a fitted xray-hybrid Pipeline) to ``out_dir``; returns the manifest."""
    out_dir = Path(out_dir)
    names = [name for name, _ in getattr(model, "steps", [])]
    if names and getattr(model.steps[-1][1], "n_views", 1) > 1:
        raise ExportError("models with test-time views (pipelines.run --tta) cannot be exported "
                          "yet: score them with the joblib file")
    if names != ["read", "preprocess", "features", "classifier"]:
        raise ExportError(f"expected steps read, preprocess, features, classifier; got {names}")
    read, preprocess, features, classifier = (step for _, step in model.steps)
    if not isinstance(classifier, DecisionClassifier) or not hasattr(classifier, "estimator_"):
        raise ExportError("the classifier step is not a fitted DecisionClassifier")

    files = {}
    spec_steps = {
        "read": _step_spec("read", "read", read),
        "preprocess": [_step_spec("preprocess", n, s) for n, s in _steps_of(preprocess)],
        "features": [],
    }
    if features.transformer_weights:
        raise ExportError("FeatureUnion transformer_weights are not supported")
    for name, extractor in features.transformer_list:
        if isinstance(extractor, CachedExtractor):
            extractor = getattr(extractor, "extractor_", extractor.extractor)
        step = _step_spec("features", name, extractor)
        if isinstance(extractor, OnnxEmbedder):
            step["params"].update(_copy_network(extractor, out_dir, files, "embedder.onnx"))
        elif isinstance(extractor, OnnxCNNScore):
            step["params"].update(_copy_network(extractor, out_dir, files, "cnn.onnx"))
        spec_steps["features"].append(step)

    try:
        head_bytes, head_spec = _convert_head(classifier.estimator_)
    except ExportError:
        raise
    except Exception as exc:  # a converter failure
        raise ExportError(f"converting the {type(classifier.estimator_).__name__} head to ONNX "
                          f"failed: {type(exc).__name__}: {exc}") from None
    head_bytes = _check_head(classifier.estimator_, head_bytes, head_spec)
    atomic_write_bytes(out_dir / "head.onnx", head_bytes)
    files["head.onnx"] = file_sha256(out_dir / "head.onnx")

    spec = {
        "format": EXPORT_FORMAT,
        "metadata": {**_jsonable(metadata), "exported_with": package_versions()},
        "feature_set": metadata.get("feature_set"),
        "pipeline": spec_steps,
        "head": {"file": "head.onnx", **head_spec},
        "calibration": _calibration_spec(classifier),
        "threshold": float(classifier.threshold_),
        "files": files,
    }
    atomic_write_bytes(out_dir / MANIFEST, (json.dumps(spec, indent=2) + "\n").encode())
    if check_paths:
        result = compare_routes(model, out_dir, check_paths)
        if result["max_abs_diff"] > PARITY_TOLERANCE or result["n_label_mismatch"]:
            raise ExportError(f"{out_dir}: the exported model disagrees with {len(check_paths)} "
                              f"check images: {result}")
        spec["check"] = result
    return spec


def compare_routes(model, out_dir, paths):
    """Score readable ``paths`` with the joblib model and the export in ``out_dir``."""
    from xray_features.io import XrayReadError, read_xray

    images = []
    for path in paths:
        try:
            images.append(read_xray(path))
        except XrayReadError:
            continue
    if not images:
        raise ExportError("no readable check image")
    exported, _ = load_onnx_model(out_dir)
    p_joblib = model[1:].predict_proba(images)[:, 1]
    p_onnx = exported[1:].predict_proba(images)[:, 1]
    threshold = float(model.steps[-1][1].threshold_)
    return {"n": len(images), "max_abs_diff": float(np.max(np.abs(p_joblib - p_onnx))),
            "n_label_mismatch": int(np.sum((p_joblib >= threshold) != (p_onnx >= threshold)))}


def _steps_of(preprocess):
    if isinstance(preprocess, Pipeline):
        return list(preprocess.steps)
    return [(type(preprocess).__name__.lower(), preprocess)]


def _step_spec(place, name, step):
    cls_name = type(step).__name__
    if STEP_CLASSES[place].get(cls_name) is not type(step):
        raise ExportError(f"cannot export {place} step {name!r}: {cls_name} is not one of "
                          f"{', '.join(STEP_CLASSES[place])}")
    params = {key: _plain(value) for key, value in step.get_params(deep=False).items()}
    for key, value in params.items():
        if not _is_plain(value):
            raise ExportError(f"cannot export {cls_name}.{key}={value!r}: not a plain value")
    return {"name": name, "class": cls_name, "params": params}


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic)
                                 else str(v)))


def _copy_network(extractor, out_dir, files, name):
    """Copy the ONNX file of ``extractor`` to ``out_dir / name`` (checked)."""
    source = extractor._resolved_path()
    data = source.read_bytes()
    digest = file_sha256(source)
    expected = extractor._expected_hash(source)
    if expected is not None and expected != digest:
        raise ExportError(f"{source}: sha256 {digest[:12]}... is not the expected "
                          f"{expected[:12]}...; refusing to export a changed network")
    atomic_write_bytes(out_dir / name, data)
    files[name] = file_sha256(out_dir / name)
    if files[name] != digest:
        raise ExportError(f"{out_dir / name}: copy differs from {source}")
    return {"model_path": name, "expected_sha256": digest}


def _convert_head(head):
    """Fitted head -> (ONNX bytes, {"kind", "input_dtype", "n_features"})."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if isinstance(head, ScoreHead):
        return _score_head_onnx(), {"kind": "score", "input_dtype": "float32", "n_features": 1}
    if (isinstance(head, Pipeline) and len(head.steps) == 2
            and isinstance(head.steps[0][1], StandardScaler)
            and isinstance(head.steps[1][1], LogisticRegression)):
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import DoubleTensorType

        n = int(head.steps[0][1].n_features_in_)
        # float64: sklearn applies the coefficients in float64, so float32 would drift.
        onx = convert_sklearn(head, initial_types=[("features", DoubleTensorType([None, n]))],
                              options={LogisticRegression: {"zipmap": False}})
        return onx.SerializeToString(), {"kind": "logreg", "input_dtype": "float64",
                                         "n_features": n}
    try:
        from xgboost import XGBClassifier
    except ImportError:  # pragma: no cover - xgboost is a core dependency
        XGBClassifier = ()
    if isinstance(head, XGBClassifier):
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        n = int(head.n_features_in_)
        # float32: XGBoost itself compares and sums in float32.
        onx = convert_xgboost(head, initial_types=[("features", FloatTensorType([None, n]))])
        return onx.SerializeToString(), {"kind": "xgb", "input_dtype": "float32", "n_features": n}
    raise ExportError(f"cannot export head {type(head).__name__}: only "
                      "Pipeline(StandardScaler, LogisticRegression), XGBClassifier and ScoreHead")


def _score_head_onnx():
    """A `ScoreHead` as ONNX: one float32 column p -> ``probabilities`` [1 - p, p],
    p clipped to [0, 1] (the network's probability passes through)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Clip", ["features", "zero", "one"], ["p"]),
         helper.make_node("Sub", ["one", "p"], ["q"]),
         helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1)],
        "score_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="xray-hybrid")
    model.ir_version = 8
    return model.SerializeToString()


def _check_head(head, onnx_bytes, head_spec, n_probe=256, seed=0):
    """Compare the ONNX head with the fitted one on random features.

    This is what catches a converter that mishandles XGBoost's base_score.
    Logistic regression is probed around the training mean (its scaler's
    mean and scale), trees on [0, 1] at varied scales.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    if "probabilities" not in [o.name for o in session.get_outputs()]:
        raise ExportError("the converted head has no 'probabilities' output")
    rng = np.random.default_rng(seed)
    shape = (n_probe, head_spec["n_features"])
    if head_spec["kind"] == "score":
        probe = rng.random(shape).astype(np.float32)
    elif head_spec["kind"] == "logreg":
        scaler = head.steps[0][1]
        probe = (scaler.mean_ + scaler.scale_ * rng.standard_normal(shape)).astype(np.float32)
    else:
        probe = rng.random(shape).astype(np.float32)
        probe[: n_probe // 2] *= rng.random((n_probe // 2, 1)).astype(np.float32)
    expected = head.predict_proba(probe)[:, 1]
    got = session.run(["probabilities"], {"features": probe.astype(head_spec["input_dtype"])})[0]
    diff = float(np.max(np.abs(np.asarray(got, np.float64)[:, 1] - expected)))
    if not diff <= HEAD_TOLERANCE:
        raise ExportError(f"the ONNX {head_spec['kind']} head gives probabilities up to {diff:.3g} "
                          f"away from the fitted head (tolerance {HEAD_TOLERANCE}); not exported. "
                          "For XGBoost this is usually a converter that ignores base_score.")
    return onnx_bytes


def _calibration_spec(classifier):
    calibrator = classifier.calibrator_
    if calibrator is None:
        return None
    lr = calibrator.model_
    spec = {"method": "platt", "coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
    probe = np.linspace(0.0, 1.0, 101)
    exact = platt(probe, spec["coef"], spec["intercept"])
    diff = np.max(np.abs(calibrator.transform(probe) - exact))
    if diff > 1e-12:
        raise ExportError(f"the calibrator does not match the Platt formula (diff {diff:.3g})")
    return spec


def build_parser():
    """The argument parser of ``python -m pipelines.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.export", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(MODELS_DIR / "default_pipeline.joblib"),
                        help="a saved .joblib (with its .sha256); default: the packaged default")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--check", nargs="+", default=None, metavar="INPUT",
                        help="images, folders or list files to compare both routes on")
    return parser


def main(argv=None):
    """Run the export CLI on ``argv``; returns the exit code (0 exported, 2 refused)."""
    args = build_parser().parse_args(argv)
    try:
        model, metadata = load_model(args.model)
        if is_multiclass(model):
            raise ExportError(three_class_refusal("pipelines.export"))
        check = None
        if args.check:
            from .score import expand_inputs
            check = expand_inputs(args.check)
        spec = export_model(model, metadata, args.out, check)
    except (ModelFileError, ExportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = f"exported {args.model} ({spec['feature_set']}/{spec['head']['kind']}) to {args.out}"
    if "check" in spec:
        line += (f"; checked on {spec['check']['n']} images: max |dP| "
                 f"{spec['check']['max_abs_diff']:.2g}, same labels")
    print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
