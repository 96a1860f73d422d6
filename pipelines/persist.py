"""Save and load fitted pipelines: joblib + a sha256 sidecar + metadata.

Loading checks the sidecar *before* unpickling (a pickle runs code when it is
loaded), then refuses a file written by another major version of the
libraries that shape the model.
"""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import joblib

from xray_features.hashing import file_sha256

__all__ = ["ModelFileError", "save_model", "load_model", "package_versions", "sha256_of",
           "atomic_write_bytes"]

FORMAT = "xray-hybrid-model/1"
_CHECKED_PACKAGES = ("scikit-learn", "xgboost", "numpy", "xray-hybrid")
_RECORDED_PACKAGES = _CHECKED_PACKAGES + ("scikit-image", "opencv-python-headless",
                                          "onnxruntime", "joblib")


class ModelFileError(RuntimeError):
    """A model file is missing, tampered with, or from incompatible versions."""


def package_versions():
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
    atomic_write_bytes(_sidecar(path), f"{digest}  {path.name}\n".encode())
    return path


def load_model(path):
    """Return ``(model, metadata)`` after checking the sidecar and versions."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise ModelFileError(f"{path}: no {sidecar.name} sidecar; refusing to load an "
                             "unverified pickle")
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    actual = sha256_of(path)
    if actual != expected:
        raise ModelFileError(f"{path}: sha256 {actual[:12]}... does not match its sidecar "
                             f"({expected[:12]}...); the file was changed or corrupted")
    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("metadata", {}).get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an xray-hybrid model file")
    metadata = payload["metadata"]
    _check_versions(path, metadata.get("versions", {}))
    return payload["model"], metadata


def _check_versions(path, saved):
    current = package_versions()
    for name in _CHECKED_PACKAGES:
        then, now = saved.get(name), current.get(name)
        if then and now and then.split(".")[0] != now.split(".")[0]:
            raise ModelFileError(f"{path}: saved with {name} {then}, but {now} is installed "
                                 "(major versions differ); refit or install the saved version")


def _sidecar(path):
    return path.with_name(path.name + ".sha256")
