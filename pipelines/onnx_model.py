"""Load an exported model folder and score with it, without unpickling anything.

An export folder (written by `pipelines.export`) holds:

- ``model.json``: the format tag, the training metadata, the class name and
  parameters of every preprocessing and feature step, the calibration, the
  threshold, and the sha256 of every other file in the folder;
- ``head.onnx``: the fitted head (raw P(pneumonia) in column 1 of its
  ``probabilities`` output);
- ``embedder.onnx``: a copy of the CNN embedder, when the feature set uses it;
- ``cnn.onnx``: a copy of the network, for a pure-CNN model (its head then
  passes the network's probability through).

`load_onnx_model` checks every sha256 first, then rebuilds the steps from a
whitelist of classes (anything else is refused) and returns an sklearn
`Pipeline` with the same steps and outputs as the joblib one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import FeatureUnion, Pipeline

from xray_features.cnn import OnnxCNNScore, OnnxEmbedder, onnx_session
from xray_features.io import ReadImages
from xray_features.preprocess import CLAHE, LungCrop, Resize
from xray_features.texture import HOGFeatures, LBPFeatures

from .decision import logit
from .persist import ModelFileError, sha256_of

__all__ = ["EXPORT_FORMAT", "MANIFEST", "STEP_CLASSES", "OnnxHead", "platt", "is_export_dir",
           "load_onnx_model"]

EXPORT_FORMAT = "xray-hybrid-onnx/1"
MANIFEST = "model.json"

# The only classes a model.json may name, per place in the pipeline.
STEP_CLASSES = {
    "read": {"ReadImages": ReadImages},
    "preprocess": {"CLAHE": CLAHE, "LungCrop": LungCrop, "Resize": Resize},
    "features": {"HOGFeatures": HOGFeatures, "LBPFeatures": LBPFeatures,
                 "OnnxEmbedder": OnnxEmbedder, "OnnxCNNScore": OnnxCNNScore},
}


def platt(p, coef, intercept):
    """sigmoid(coef * logit(p) + intercept), as PlattCalibrator computes it."""
    return expit(coef * logit(p) + intercept)  # expit: no overflow for large |z|


class OnnxHead(ClassifierMixin, BaseEstimator):
    """The last pipeline step: head ONNX -> Platt calibration -> ``threshold_``.

    Built by `load_onnx_model`; ``calibration`` is ``None`` or
    ``{"coef", "intercept"}``.
    """

    def __init__(self, path, input_dtype, threshold, calibration=None, n_threads=1):
        self.path = path
        self.input_dtype = input_dtype
        self.threshold = threshold
        self.calibration = calibration
        self.n_threads = n_threads

    classes_ = np.array([0, 1])

    @property
    def threshold_(self):
        """The decision threshold, as `DecisionClassifier` names it."""
        return self.threshold

    def __sklearn_is_fitted__(self):
        return True

    def fit(self, X, y=None):
        """Nothing to fit: the head was fitted before it was exported."""
        raise NotImplementedError("an exported head is already fitted; refit the joblib model "
                                  "and export it again")

    def _session(self):
        return onnx_session(self.path, self.n_threads)

    def raw_proba(self, X):
        """Uncalibrated P(pneumonia) from the head, float64."""
        session = self._session()
        X = np.ascontiguousarray(X, dtype=np.dtype(self.input_dtype))
        out = session.run(["probabilities"], {session.get_inputs()[0].name: X})[0]
        return np.asarray(out, dtype=np.float64)[:, 1]

    def predict_proba(self, X):
        """(n, 2): calibrated P(normal), P(pneumonia) of the feature rows ``X``."""
        p = self.raw_proba(X)
        if self.calibration is not None:
            p = platt(p, self.calibration["coef"], self.calibration["intercept"])
        return np.column_stack([1 - p, p])

    def predict(self, X):
        """1 (pneumonia) where the calibrated probability reaches ``threshold_``."""
        return (self.predict_proba(X)[:, 1] >= self.threshold).astype(int)


def is_export_dir(path):
    """Whether ``path`` is a folder written by `pipelines.export` (it holds a ``model.json``)."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def load_onnx_model(folder):
    """Return ``(pipeline, metadata)`` from an export folder; raises `ModelFileError`."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelFileError(f"{folder}: no {MANIFEST}; not an exported model folder")
    try:
        spec = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{manifest_path}: unreadable manifest: {exc}") from None
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        raise ModelFileError(f"{manifest_path}: not an {EXPORT_FORMAT} manifest")
    files = _verify_files(folder, spec.get("files"))
    _refuse_external_data(folder, files)
    try:
        _check_decision_spec(spec)
        pipeline = _build(folder, spec, files)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{manifest_path}: invalid model description: {exc}") from None
    _open_head(pipeline.steps[-1][1], spec["head"].get("n_features"))
    return pipeline, spec.get("metadata", {})


def _open_head(head, n_features):
    """Fail at load time, not per image, when the head cannot run."""
    try:
        inputs = head._session().get_inputs()
    except Exception as exc:
        raise ModelFileError(f"{head.path}: onnxruntime cannot load it: {exc}") from None
    width = inputs[0].shape[-1] if len(inputs) == 1 else None
    if width != n_features:
        raise ModelFileError(f"{head.path}: input width {width} differs from the manifest's "
                             f"n_features {n_features}")


def _verify_files(folder, files):
    if not isinstance(files, dict) or not files:
        raise ModelFileError(f"{folder / MANIFEST}: no file checksums")
    for name, expected in files.items():
        path = _inside(folder, name)
        if not path.is_file():
            raise ModelFileError(f"{path}: listed in {MANIFEST} but missing")
        actual = sha256_of(path)
        if actual != expected:
            raise ModelFileError(f"{path}: sha256 {actual[:12]}... does not match {MANIFEST} "
                                 f"({str(expected)[:12]}...); the file was changed or corrupted")
    return files


def _refuse_external_data(folder, files):
    """Refuse an ONNX file whose tensors live in other files: only the files the
    manifest hashes may be loaded, and onnxruntime would read external data
    from beside the model, unchecked.

    With the ``onnx`` package (the export extra) every tensor is inspected;
    without it (a scoring-only install) onnxruntime is asked to build the model
    from its bytes alone, which it cannot do when tensors live in other files.
    """
    try:
        import onnx
    except ImportError:
        onnx = None
    for name in files:
        if not name.endswith(".onnx"):
            continue
        path = _inside(folder, name)
        if onnx is None:
            _refuse_external_data_without_onnx(path)
            continue
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ModelFileError(f"{path}: not a readable ONNX file ({exc})") from None
        external = [tensor.name for tensor in _tensors(proto.graph)
                    if tensor.data_location == onnx.TensorProto.EXTERNAL]
        if external:
            raise ModelFileError(f"{path}: its tensors {external[:3]} are stored in external "
                                 f"data files, which {MANIFEST} does not pin; refusing it")


def _refuse_external_data_without_onnx(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = str(exc)
        if "external data" in text.lower() or "model_path must not be empty" in text:
            raise ModelFileError(f"{path}: its tensors are stored in external data files, which "
                                 f"{MANIFEST} does not pin; refusing it") from None
        raise ModelFileError(f"{path}: not a readable ONNX file ({exc})") from None


def _tensors(graph):
    """Every tensor of an ONNX graph: initializers, constants' values, subgraphs'."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _check_decision_spec(spec):
    """The threshold is a JSON number strictly between 0 and 1; the calibration's
    coef and intercept are finite JSON numbers (not strings, not NaN)."""
    threshold = spec["threshold"]
    if not _is_number(threshold) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be a number strictly between 0 and 1, "
                         f"not {threshold!r}")
    calibration = spec.get("calibration")
    if calibration is not None:
        for key in ("coef", "intercept"):
            if not _is_number(calibration[key]):
                raise ValueError(f"calibration {key} must be a finite number, "
                                 f"not {calibration[key]!r}")


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# Runtime parameters a manifest may set, and their sane range.
# (n_jobs may also be -1, joblib's "one per CPU").
RUNTIME_LIMITS = {"n_threads": (1, 256), "n_jobs": (1, 256), "batch_size": (1, 4096)}


def _check_runtime_params(name, params):
    """Refuse thread counts and batch sizes that would hang or exhaust a machine."""
    for key, (low, high) in RUNTIME_LIMITS.items():
        if key in params and params[key] is not None:
            value = params[key]
            if key == "n_jobs" and value == -1:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"parameter {name}.{key} must be a whole number from {low} "
                                 f"to {high}, not {value!r}")


def _inside(folder, name):
    """A file named in the manifest: a bare file name inside ``folder``."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ModelFileError(f"{folder / MANIFEST}: bad file name {name!r} (must be a bare name)")
    return folder / name


def _make(place, step):
    classes = STEP_CLASSES[place]
    name = step["class"]
    if name not in classes:
        raise ValueError(f"class {name!r} is not allowed in {place} "
                         f"(allowed: {', '.join(classes)})")
    cls = classes[name]
    params = step.get("params", {})
    allowed = set(cls._get_param_names())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {name}")
    for key, value in params.items():
        if not _is_plain(value):
            raise ValueError(f"parameter {name}.{key} is not a plain JSON value")
    _check_runtime_params(name, params)
    return cls(**params)


def _is_plain(value):
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return False


def _build(folder, spec, files):
    steps = spec["pipeline"]
    read = _make("read", steps["read"])
    preprocess = Pipeline([(s["name"], _make("preprocess", s)) for s in steps["preprocess"]])
    extractors = []
    for step in steps["features"]:
        extractor = _make("features", step)
        if isinstance(extractor, (OnnxEmbedder, OnnxCNNScore)):
            name = extractor.model_path
            if name not in files:
                raise ValueError(f"network file {name!r} has no sha256 in the manifest")
            extractor.set_params(model_path=str(_inside(folder, name)),
                                 expected_sha256=files[name])
        extractors.append((step["name"], extractor))
    head = spec["head"]
    if head["file"] not in files:
        raise ValueError(f"head file {head['file']!r} has no sha256 in the manifest")
    if head["input_dtype"] not in ("float32", "float64"):
        raise ValueError(f"head input_dtype must be float32 or float64, "
                         f"not {head['input_dtype']!r}")
    calibration = spec.get("calibration")
    if calibration is not None:
        calibration = {"coef": float(calibration["coef"]),
                       "intercept": float(calibration["intercept"])}
    classifier = OnnxHead(str(_inside(folder, head["file"])), head["input_dtype"],
                          float(spec["threshold"]), calibration)
    return Pipeline([("read", read), ("preprocess", preprocess),
                     ("features", FeatureUnion(extractors)), ("classifier", classifier)])
