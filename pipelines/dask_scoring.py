"""Score many chest X-ray files, or extract their features, on a Dask cluster (optional extra).

`extract_features_on_dask` is `pipelines.assemble.extract_features` cut into
chunks, one Dask task per chunk (used by ``pipelines.run --dask``); it
returns the same arrays.

`score_on_dask` returns the same rows as `pipelines.score.score_paths` run
locally over the same paths, in input order. The paths are cut into batches
of ``batch_size`` (as the score CLI does), one Dask task per batch; every
worker loads the model itself from ``model_path`` with
`pipelines.persist.load_model` (sidecar sha256 checked before unpickling)
and keeps it for its later batches. No fitted model is pickled from the
client: only the path, the file's sha256 as the client sees it, and the
image paths travel. So ``model_path`` and the images must be readable at the
same paths on every worker (a shared filesystem), and a worker whose model
file differs from the client's refuses to score.

Needs ``distributed``::

    pip install 'xray-hybrid[dask]'

Example::

    from pipelines.dask_scoring import score_on_dask
    rows = score_on_dask("runs/full/models/hog_cnn-logreg.joblib", paths,
                         scheduler="tcp://10.0.0.5:8786")
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

from .persist import ModelFileError, load_model, sha256_of

__all__ = ["score_on_dask", "extract_features_on_dask", "DaskUnavailableError", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'xray-hybrid[dask]'"


class DaskUnavailableError(ImportError):
    """``distributed`` (Dask's cluster scheduler) is not installed."""


def _require_distributed():
    try:
        import dask.bag  # noqa: F401
        import distributed
    except ImportError as exc:
        raise DaskUnavailableError(
            f"Dask scoring needs the optional packages dask and distributed ({exc}); "
            f"install them with: {INSTALL_HINT}") from None
    return distributed


def score_on_dask(model_path, paths, scheduler="local", batch_size=64, n_workers=None,
                  processes=True):
    """Score ``paths`` with the saved model at ``model_path`` on a Dask cluster.

    Parameters
    ----------
    model_path : path
        A model written by `pipelines.persist.save_model` (with its
        ``.sha256`` sidecar), readable at this path on every worker.
    paths : sequence of paths
        Image files, as `pipelines.score.score_paths` takes them.
    scheduler : str or distributed.Client
        ``"local"`` starts a `distributed.LocalCluster` on 127.0.0.1 for this
        call and closes it after; an address such as ``"tcp://host:8786"``
        connects to a running scheduler; a `distributed.Client` is used as is.
    batch_size : int
        Images per task (the score CLI's ``--batch-size``).
    n_workers : int, optional
        Workers of the ``"local"`` cluster (default: one per CPU, 1 thread each).
    processes : bool
        Whether the ``"local"`` cluster's workers are processes (default) or threads.

    Returns
    -------
    list of dict
        One row per path, in input order, with `pipelines.score.COLUMNS`.
        A bad image gets a ``status="error"`` row; a model that cannot be
        loaded raises `pipelines.persist.ModelFileError`.
    """
    _require_distributed()
    import dask.bag as db

    paths = [os.fspath(p) for p in paths]
    if not paths:
        return []
    step = int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_path = os.path.abspath(os.fspath(model_path))
    if not Path(model_path).is_file():
        raise ModelFileError(f"{model_path}: model file not found")
    expected = sha256_of(model_path)
    batches = [paths[start:start + step] for start in range(0, len(paths), step)]
    bag = db.from_sequence(batches, npartitions=len(batches)).map(
        _score_batch, model_path, expected)
    with _connect(scheduler, n_workers, processes) as client:
        results = client.compute(bag, sync=True)
    return [row for batch in results for row in batch]


def extract_features_on_dask(paths, extractor_names, cache_dir=None, preprocessor=None,
                             scheduler="local", chunk_size=256, n_workers=None, processes=True,
                             **kwargs):
    """`extract_features` on a Dask cluster: ``{name: (n, n_features) float32}``.

    ``paths`` and ``cache_dir`` must be readable (the cache writable) at the
    same paths on every worker. ``scheduler``, ``n_workers`` and ``processes``
    are as in `score_on_dask`; ``kwargs`` go to `extract_features`.
    """
    _require_distributed()
    import dask.bag as db
    import numpy as np

    paths = [os.fspath(p) for p in paths]
    names = list(extractor_names)
    step = max(1, int(chunk_size))
    chunks = [paths[start:start + step] for start in range(0, len(paths), step)]
    if not chunks:
        from .assemble import extract_features
        return extract_features([], names, cache_dir, preprocessor=preprocessor, **kwargs)
    bag = db.from_sequence(chunks, npartitions=len(chunks)).map(
        _extract_chunk, names, cache_dir, preprocessor, kwargs)
    with _connect(scheduler, n_workers, processes) as client:
        parts = client.compute(bag, sync=True)
    return {name: np.vstack([part[name] for part in parts]) for name in names}


def _extract_chunk(paths, names, cache_dir, preprocessor, kwargs):
    from .assemble import extract_features

    return extract_features(paths, names, cache_dir, preprocessor=preprocessor,
                            **{**kwargs, "progress": False})


@contextmanager
def _connect(scheduler, n_workers, processes):
    distributed = _require_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
    elif scheduler == "local":
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                      processes=processes, host="127.0.0.1",
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            yield client
    elif isinstance(scheduler, str) and "://" in scheduler:
        with distributed.Client(scheduler) as client:
            yield client
    else:
        raise ValueError(f"scheduler must be 'local', an address like 'tcp://host:8786' or a "
                         f"distributed.Client, got {scheduler!r}")


# ---- worker side -------------------------------------------------------------

_MODELS = {}  # (path, sha256) -> fitted pipeline, per worker process
_LOCK = threading.Lock()


def _worker_model(model_path, expected_sha256):
    key = (model_path, expected_sha256)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            try:
                actual = sha256_of(model_path)
            except OSError as exc:
                raise ModelFileError(f"{model_path}: cannot read the model on this worker "
                                     f"({exc})") from None
            if actual != expected_sha256:
                raise ModelFileError(
                    f"{model_path}: the file on this worker (sha256 {actual[:12]}...) is not "
                    f"the client's ({expected_sha256[:12]}...)")
            model, _ = load_model(model_path)  # checks the sidecar before unpickling
            _MODELS.clear()  # keep one model per worker
            _MODELS[key] = model
    return model


def _score_batch(batch, model_path, expected_sha256):
    from .scoring import score_paths

    return score_paths(_worker_model(model_path, expected_sha256), list(batch))
