"""Save and load fitted pipelines: joblib + a sha256 sidecar + metadata.

Loading checks the sidecar *before* unpickling (a pickle runs code when it is
loaded) and refuses a file written by another major version of the libraries
that shape the model: the versions are read from a comment line of the sidecar
before unpickling (files saved before that line existed are checked after),
and again from the unpickled metadata. A file that fails to unpickle, or whose
threshold or calibration is not a finite number (the threshold strictly
between 0 and 1), is refused with `ModelFileError`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import joblib
import numpy as np

from xray_features.hashing import file_sha256

__all__ = ["ModelFileError", "save_model", "load_model", "packaged_model_file",
           "package_versions", "sha256_of", "atomic_write_bytes", "check_decision_numbers"]

FORMAT = "xray-hybrid-model/1"
_VERSIONS_PREFIX = "# versions "  # the sidecar's comment line (sha256sum -c skips it)
_CHECKED_PACKAGES = ("scikit-learn", "xgboost", "numpy", "xray-hybrid")
_RECORDED_PACKAGES = _CHECKED_PACKAGES + ("scikit-image", "opencv-python-headless",
                                          "onnxruntime", "joblib")


class ModelFileError(RuntimeError):
    """A model file is missing, tampered with, or from incompatible versions."""


def package_versions():
    """The installed versions of the libraries a saved model records (None: not installed)."""
    versions = {}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


sha256_of = file_sha256


def _umask_mode(mode=0o666):
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; give the usual file mode
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model, path, metadata):
    """Write ``model`` with ``metadata`` (a JSON-able dict) and a ``.sha256`` sidecar."""
    path = Path(path)
    metadata = {**metadata, "format": FORMAT, "versions": package_versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(tmp, _umask_mode())
    try:
        joblib.dump({"metadata": metadata, "model": model}, tmp, compress=3)
        digest = sha256_of(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    versions = json.dumps(metadata["versions"], sort_keys=True)
    atomic_write_bytes(_sidecar(path), f"{digest}  {path.name}\n{_VERSIONS_PREFIX}{versions}\n"
                       .encode())
    return path


def packaged_model_file(path):
    """``path`` as given, or, when it is the bare name of a saved model shipped
    in ``xray_features/models`` and no such file exists here (for example
    ``default_pipeline_fp32.joblib``), that packaged file."""
    path = Path(path)
    if path.exists() or len(path.parts) != 1:
        return path
    from xray_features.cnn import MODELS_DIR

    packaged = MODELS_DIR / path.name
    return packaged if packaged.is_file() else path


def load_model(path):
    """Return ``(model, metadata)`` of a file written by `save_model`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.joblib`` file; its ``.sha256`` sidecar must sit beside it.

    Returns
    -------
    model : sklearn.pipeline.Pipeline
    metadata : dict

    Raises
    ------
    ModelFileError
        No file or sidecar, a sha256 that differs from the sidecar's (either
        case of hex digits is accepted), a major-version mismatch (checked
        before unpickling when the sidecar records the versions), a file that
        fails to unpickle, or a threshold / calibration that is not a finite
        number (see `check_decision_numbers`).
    """
    path = packaged_model_file(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise ModelFileError(f"{path}: no {sidecar.name} sidecar; refusing to load an "
                             "unverified pickle")
    expected, saved_versions = _read_sidecar(sidecar)
    actual = sha256_of(path)
    if actual != expected:
        raise ModelFileError(f"{path}: sha256 {actual[:12]}... does not match its sidecar "
                             f"({expected[:12]}...); the file was changed or corrupted")
    if saved_versions is not None:
        _check_versions(path, saved_versions)
    try:
        payload = joblib.load(path)
    except Exception as exc:  # ModuleNotFoundError, AttributeError, pickle errors...
        raise ModelFileError(f"{path}: cannot be unpickled ({type(exc).__name__}: {exc}); it "
                             "was probably saved with other library versions") from None
    if not isinstance(payload, dict) or payload.get("metadata", {}).get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an xray-hybrid model file")
    metadata = payload["metadata"]
    _check_versions(path, metadata.get("versions", {}))
    check_decision_numbers(payload["model"], path)
    return payload["model"], metadata


def _read_sidecar(sidecar):
    """The sha256 (lower case) and the saved versions (None when absent) of a sidecar."""
    try:
        text = sidecar.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise ModelFileError(f"{sidecar}: cannot read it ({exc.strerror or exc})") from None
    digest, versions = "", None
    for line in text.splitlines():
        if line.startswith(_VERSIONS_PREFIX):
            try:
                versions = json.loads(line[len(_VERSIONS_PREFIX):])
            except ValueError:
                raise ModelFileError(f"{sidecar}: unreadable versions line") from None
            if not isinstance(versions, dict):
                raise ModelFileError(f"{sidecar}: unreadable versions line")
        elif line.strip() and not line.startswith("#") and not digest:
            digest = line.split()[0].lstrip("\\").lower()
    return digest, versions


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_decision_numbers(model, source=""):
    """Refuse a model whose decision numbers could fail towards NORMAL.

    Whatever its head, the last step's ``threshold_`` must be a real number
    strictly between 0 and 1, and the coefficients of its probability
    calibration (``calibrator_.model_``, when there is one) finite.

    Parameters
    ----------
    model : sklearn.pipeline.Pipeline
    source : str or os.PathLike
        Names the model in the error message.

    Raises
    ------
    ModelFileError
    """
    last = model.steps[-1][1] if hasattr(model, "steps") else model
    where = f"{source}: " if str(source) else ""
    threshold = getattr(last, "threshold_", None)
    if getattr(last, "decision", None) == "argmax":
        threshold = 0.5  # a three-class argmax rule reads no threshold
    if not _is_real(threshold) or not math.isfinite(threshold) or not 0 < threshold < 1:
        raise ModelFileError(f"{where}threshold {threshold!r} is not a number strictly between "
                             "0 and 1; refusing the model")
    fitted = getattr(getattr(last, "calibrator_", None), "model_", None)
    for name in ("coef_", "intercept_"):
        values = getattr(fitted, name, None)
        if values is None:
            continue
        try:
            finite = bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise ModelFileError(f"{where}the probability calibration's {name.rstrip('_')} is "
                                 f"not finite ({values!r}); refusing the model")
    calibration = getattr(last, "calibration", None)  # an exported head's {"coef", "intercept"}
    if isinstance(calibration, dict):
        for name, value in calibration.items():
            if not _is_real(value) or not math.isfinite(value):
                raise ModelFileError(f"{where}the probability calibration's {name} {value!r} is "
                                     "not a finite number; refusing the model")


def _check_versions(path, saved):
    current = package_versions()
    for name in _CHECKED_PACKAGES:
        then, now = saved.get(name), current.get(name)
        if then and now and then.split(".")[0] != now.split(".")[0]:
            raise ModelFileError(f"{path}: saved with {name} {then}, but {now} is installed "
                                 "(major versions differ); refit or install the saved version")


def _sidecar(path):
    return path.with_name(path.name + ".sha256")
