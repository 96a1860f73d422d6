"""CNN embeddings and pure-CNN classifiers, run with onnxruntime only.

Both estimators take what the preprocessors return: a 3-D float32 array
``(n, H, W)`` or a list of 2-D arrays, grayscale in [0, 1]. Each image is
resized to the model's square input (``cv2.INTER_AREA``), mapped from
x in [0, 1] to ``(255 x - 127) / 128``, copied to the model's channels and run
in batches. The ONNX input is named ``image`` (N, C, S, S) float32.

The onnxruntime session is opened lazily, checked against a sha256 first,
dropped when pickling and reopened on first use after loading.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from sklearn.base import BaseEstimator, ClassifierMixin

from ._images import ImageTransformerMixin, as_images
from .hashing import file_sha256

__all__ = [
    "MODELS_DIR", "PACKAGED_SHA256", "ModelIntegrityError", "file_sha256", "onnx_session",
    "OnnxEmbedder", "OnnxCNNClassifier", "OnnxCNNScore", "prepare_batch", "resolve_model_path",
    "portable_model_path",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_EMBEDDER = "efficientnet_lite0_embedder.onnx"
# the same embedder in static int8: the hybrid's fast path (``cnn_int8``)
INT8_EMBEDDER = "efficientnet_lite0_embedder.int8.onnx"
# the packaged pure CNN with the best site_val AUC (models/MODEL_CARD.md)
DEFAULT_CLASSIFIER = "cnn_ft224_cs_acq_cs.onnx"

# sha256 of the models shipped in MODELS_DIR (also listed in models/MODEL_CARD.md).
PACKAGED_SHA256 = {
    "efficientnet_lite0_embedder.onnx":
        "df06446057e2688d51d9f5c4e762926c53bae2b4e2e36ec3d967f66cb1553026",
    "cnn_small64_noaug.onnx":
        "35961edc1d5e9b62bf6f99f9902cde14508fbc1328d0cf9235f11f1f8c1a4aa7",
    "cnn_lite0_128_aug_e3.onnx":
        "606c367d3fdc095595582553aca9c6496006b437d4b234c051abbe8ce83f35fd",
    "cnn_ft224_cs_acq_cs.onnx":
        "6e9b3e0703306a776a1be7ae7583cfd23966bd6fdc6bbe8854eff28e254eb30a",
    # static int8 versions (experiments/quantize_cnn.py; models/MODEL_CARD.md)
    "efficientnet_lite0_embedder.int8.onnx":
        "436ef92710cee760958a8642ee3b87912ee5fbff0f20fd83f4a513426f27d1ad",
    "cnn_ft224_cs_acq_cs.int8.onnx":
        "268aab505b2802929b354b7958e9af65d9d1498cf2e01410cd34ebc63dece277",
}


class ModelIntegrityError(RuntimeError):
    """An ONNX file's sha256 differs from the expected one."""


def prepare_batch(images, size, channels):
    """2-D images in [0, 1] -> (n, channels, size, size) float32, (255 x - 127) / 128."""
    batch = np.empty((len(images), channels, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        if image.shape != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        batch[i] = (image * np.float32(255.0) - np.float32(127.0)) / np.float32(128.0)
    return batch


@functools.lru_cache(maxsize=16)
def _open_session(path, mtime_ns, size, expected_sha256, n_threads):
    """Check the file's sha256, then open an onnxruntime session.

    Sessions live in this process-wide cache, never on an estimator, so
    estimators stay plain parameters: they clone and pickle without a session,
    and a changed file (new mtime or size) is checked and opened again.
    """
    if expected_sha256 is not None:
        actual = _cached_sha256(path, mtime_ns, size)
        if actual != expected_sha256:
            raise ModelIntegrityError(
                f"{path}: sha256 is {actual}, expected {expected_sha256}. The file is corrupt "
                "or was replaced; re-export it (see models/MODEL_CARD.md) or pass the "
                "right expected_sha256."
            )
    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning after each run: on 2 cores the spin
    # stole the CPU from the next batch's decoding and HOG (benchmarks/README.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=64)
def _cached_sha256(path, mtime_ns, size):
    """The file's sha256, hashed once per (path, modification time, size)."""
    return file_sha256(path)


def _file_version(path):
    """(resolved path, mtime_ns, size) of an ONNX file: the key of the caches above."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def onnx_session(path, n_threads=1, expected_sha256=None):
    """The process-wide onnxruntime session of the ONNX file at ``path``
    (sha256-checked first when ``expected_sha256`` is given)."""
    return _open_session(*_file_version(path), expected_sha256, int(n_threads))


def resolve_model_path(model_path):
    """The file a ``model_path`` names: a packaged model's bare file name (a key
    of `PACKAGED_SHA256`) resolves in `MODELS_DIR` wherever the package is
    installed; anything else is a path as given."""
    path = Path(os.fspath(model_path))
    return MODELS_DIR / path if str(path) in PACKAGED_SHA256 else path


def portable_model_path(model_path):
    """What a saved pipeline should store for ``model_path``: the bare file name
    of a packaged model (so the pickle works on any install), else the path."""
    path = Path(os.fspath(model_path))
    if path.name in PACKAGED_SHA256 and resolve_model_path(path.name).resolve() == path.resolve():
        return path.name
    return str(model_path)


class _OnnxModelMixin:
    """Lazy, integrity-checked onnxruntime session, shared per process.

    Expects the params ``model_path``, ``expected_sha256``, ``n_threads`` and
    ``batch_size``, and a class attribute ``_default_model`` (file name in
    MODELS_DIR, or None when ``model_path`` is required).
    """

    _default_model = None

    def _resolved_path(self):
        if self.model_path is not None:
            return resolve_model_path(self.model_path)
        if self._default_model is None:
            raise ValueError(f"{type(self).__name__} needs a model_path")
        return MODELS_DIR / self._default_model

    def _expected_hash(self, path):
        if self.expected_sha256 is not None:
            return self.expected_sha256.lower()
        if path.resolve().parent == MODELS_DIR:
            return PACKAGED_SHA256.get(path.name)
        return None  # a user's own model with no hash given: not checked

    def model_sha256(self):
        """sha256 of the model file these params name: what the feature cache
        keys on, so a file replaced at the same path never serves old rows."""
        return _cached_sha256(*_file_version(self._resolved_path()))

    def _get_session(self):
        """The process-wide session for the current params (see `_open_session`)."""
        path = self._resolved_path()
        return onnx_session(path, self.n_threads, self._expected_hash(path))

    def _input_geometry(self, session, image_size):
        """(channels, size) of the ``image`` input; ``image_size`` overrides a dynamic size."""
        shape = session.get_inputs()[0].shape
        channels = shape[1] if isinstance(shape[1], int) else 3
        size = shape[2] if isinstance(shape[2], int) else None
        if image_size is not None:
            if size is not None and size != image_size:
                raise ValueError(f"image_size={image_size} but the model's input is {size} px")
            size = image_size
        if size is None:
            raise ValueError("the model's input size is dynamic: set image_size")
        return int(channels), int(size)

    def _run(self, X, output_name, image_size):
        """Normalise ``X`` batch by batch and run the model -> stacked ``output_name``."""
        images = as_images(X)
        session = self._get_session()
        channels, size = self._input_geometry(session, image_size)
        input_name = session.get_inputs()[0].name
        step = max(1, int(self.batch_size))
        outputs = []
        for start in range(0, len(images), step):
            batch = prepare_batch(images[start:start + step], size, channels)
            outputs.append(session.run([output_name], {input_name: batch})[0])
        return np.concatenate(outputs, axis=0)

    def _probability_output(self):
        """The ONNX output holding P(pneumonia): ``output_name``, else one named
        ``probability`` / ``probabilities``, else the first output."""
        if self.output_name is not None:
            return self.output_name
        names = [o.name for o in self._get_session().get_outputs()]
        return next((n for n in names if n in ("probability", "probabilities")), names[0])

    def _pneumonia_probability(self, X):
        """(n,) float64 P(pneumonia) of the images ``X``, clipped to [0, 1]."""
        out = np.asarray(self._run(X, self._probability_output(), self.image_size), np.float64)
        p = out[:, -1] if out.ndim == 2 else out
        if p.shape != (len(out),):
            raise ValueError(f"unexpected probability output of shape {out.shape}")
        return np.clip(p, 0.0, 1.0)


class OnnxEmbedder(_OnnxModelMixin, ImageTransformerMixin):
    """Images -> CNN embedding (default: ImageNet EfficientNet-Lite0, 1280-d).

    Stateless: ``fit`` only validates ``X``, and ``transform`` works unfitted.

    Parameters
    ----------
    model_path : path, optional
        ONNX embedder; None uses the packaged EfficientNet-Lite0.
    image_size : int
        Side the images are resized to (the packaged model expects 224).
    batch_size : int
        Images per onnxruntime call; results do not depend on it. 8 was the
        fastest on 2 cores (7.4 ms/image against 8.5 at 32).
    n_threads : int
        onnxruntime intra-op threads.
    expected_sha256 : str, optional
        Required hash of the model file; None uses the registry for packaged
        models (`PACKAGED_SHA256`) and skips the check for other files.
    output_name : str
        The ONNX output to return.
    """

    _default_model = DEFAULT_EMBEDDER

    def __init__(self, model_path=None, image_size=224, batch_size=8, n_threads=2,
                 expected_sha256=None, output_name="embedding"):
        self.model_path = model_path
        self.image_size = image_size
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.expected_sha256 = expected_sha256
        self.output_name = output_name

    def transform(self, X):
        """(n, n_features) float32 embedding."""
        out = self._run(X, self.output_name, self.image_size)
        return np.ascontiguousarray(out.reshape(len(out), -1), dtype=np.float32)

    def n_features(self):
        """Embedding width, read from the model's output shape."""
        for output in self._get_session().get_outputs():
            if output.name == self.output_name:
                return int(output.shape[-1])
        raise ValueError(f"the model has no output named {self.output_name!r}")

    def get_feature_names_out(self, input_features=None):
        """``cnn_0`` ... ``cnn_{n-1}``, one per embedding dimension."""
        return np.asarray([f"cnn_{i}" for i in range(self.n_features())], dtype=object)


class OnnxCNNClassifier(_OnnxModelMixin, ClassifierMixin, BaseEstimator):
    """A pretrained ONNX CNN giving P(pneumonia), as an sklearn classifier.

    The model's ``image`` input fixes the channels and (when static) the
    size. Its probability output may be (n,), (n, 1) or (n, 2) (column 1
    is used). ``fit`` learns nothing: classes are always ``[0, 1]``.

    Parameters
    ----------
    model_path : path, optional
        The ONNX classifier; None uses the packaged pure-CNN baseline
        (see models/MODEL_CARD.md).
    threshold : float
        ``predict`` returns 1 where P(pneumonia) >= threshold.
    output_name : str, optional
        Probability output; None picks one named ``probability`` /
        ``probabilities``, else the first output.
    image_size : int, optional
        Needed only when the model's input size is dynamic.
    batch_size, n_threads, expected_sha256 :
        As in `OnnxEmbedder`.
    """

    _default_model = DEFAULT_CLASSIFIER

    def __init__(self, model_path=None, threshold=0.5, output_name=None, image_size=None,
                 batch_size=32, n_threads=2, expected_sha256=None):
        self.model_path = model_path
        self.threshold = threshold
        self.output_name = output_name
        self.image_size = image_size
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.expected_sha256 = expected_sha256

    @property
    def classes_(self):
        """Always ``[0, 1]``: normal, pneumonia."""
        return np.array([0, 1])

    def fit(self, X, y=None):
        """Validate ``X`` (and ``y`` in {0, 1}); the model is already trained."""
        as_images(X)
        if y is not None and not np.isin(np.unique(y), self.classes_).all():
            raise ValueError("labels must be 0 (normal) or 1 (pneumonia)")
        return self

    def predict_proba(self, X):
        """(n, 2) float64: P(normal), P(pneumonia)."""
        p = self._pneumonia_probability(X)
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X):
        """P(pneumonia)."""
        return self.predict_proba(X)[:, 1]

    def predict(self, X):
        """1 (pneumonia) where P(pneumonia) reaches ``threshold``."""
        return (self.predict_proba(X)[:, 1] >= self.threshold).astype(np.int64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


class OnnxCNNScore(_OnnxModelMixin, ImageTransformerMixin):
    """Images -> a pretrained ONNX CNN's P(pneumonia), as one feature column.

    The feature step of a pure-CNN pipeline: ``read -> preprocess ->
    OnnxCNNScore -> DecisionClassifier(ScoreHead())``, so that a CNN is
    calibrated, thresholded, saved, scored, recalibrated and exported like
    every other model. Stateless: ``fit`` only validates ``X``.

    Parameters
    ----------
    model_path : path, optional
        The ONNX classifier; a packaged model's bare file name (a key of
        `PACKAGED_SHA256`) resolves in `MODELS_DIR` wherever the package is
        installed; None uses the packaged default CNN (`DEFAULT_CLASSIFIER`).
    output_name : str, optional
        Probability output; None picks one named ``probability`` /
        ``probabilities``, else the first output.
    image_size : int, optional
        Needed only when the model's input size is dynamic.
    batch_size : int, default=8
        Images per onnxruntime call; results do not depend on it. 8, as for
        `OnnxEmbedder`: larger batches were slower on 2 cores.
    n_threads : int, default=2
        onnxruntime intra-op threads.
    expected_sha256 : str, optional
        As in `OnnxEmbedder`.

    See Also
    --------
    OnnxCNNClassifier : the same network as a stand-alone classifier.
    """

    _default_model = DEFAULT_CLASSIFIER

    def __init__(self, model_path=None, output_name=None, image_size=None, batch_size=8,
                 n_threads=2, expected_sha256=None):
        self.model_path = model_path
        self.output_name = output_name
        self.image_size = image_size
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.expected_sha256 = expected_sha256

    def transform(self, X):
        """(n, 1) float32: P(pneumonia) of each image (the network's own precision)."""
        return self._pneumonia_probability(X)[:, None].astype(np.float32)

    def get_feature_names_out(self, input_features=None):
        """``["cnn_probability"]``."""
        return np.asarray(["cnn_probability"], dtype=object)
