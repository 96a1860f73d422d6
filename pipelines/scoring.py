"""Scoring images with a saved pipeline: read, check, batch, predict, one row each.

The part of batch scoring that the command line (`pipelines.score`), the Dask
backend (`pipelines.dask_scoring`) and site recalibration (`pipelines.calibrate`)
share: every path is read (`xray_features.io.read_xray_and_header`), films
without content are refused, images are batched by decoded pixels, and every
probability is checked before it becomes a row. Never raises for a bad image.
"""

from __future__ import annotations

import math

import numpy as np

from xray_features.dicom import ID_FIELDS, header_warnings
from xray_features.io import XrayReadError, read_xray_and_header

from .multiclass import decide, is_multiclass

__all__ = ["DICOM_COLUMNS", "LABEL_NAMES", "BLANK_STD", "DEFAULT_BATCH_PIXELS", "dicom_ids",
           "scored_status", "content_error", "probabilities_of", "score_paths", "score_columns",
           "score_rows"]

LABEL_NAMES = ("NORMAL", "PNEUMONIA")
DICOM_COLUMNS = ("sop_instance_uid", "study_instance_uid", "accession_number")
"""A DICOM's SOPInstanceUID, StudyInstanceUID and AccessionNumber (empty for
other files), to join rows back to the hospital's records."""

BLANK_STD = 0.01
"""A film whose pixel standard deviation (on the reader's 0-1 scale) is below
this has no image content: 0.01 is 2.6 grey levels of 255. The least varied of
the 5,540 Kermany films (train, val, site_val) has 0.078, and 0.1 % of them
are under 0.10."""

DEFAULT_BATCH_PIXELS = 64_000_000
"""Decoded pixels held at once while scoring (256 MB of float32): a batch is
cut where the next image would pass it, so one image of the reader's largest
size (64 M pixels) is scored alone."""


def _row(path, threshold, status, error="", probability="", header=None):
    """A binary row in `COLUMNS`; ``model`` is filled in by the run (`model_id`)."""
    prediction = "" if probability == "" else LABEL_NAMES[int(probability >= threshold)]
    return {"path": path, "probability": "" if probability == "" else f"{probability:.6f}",
            "prediction": prediction, "threshold": _threshold_text(threshold), "model": "",
            "status": status, "error": error, **dicom_ids(header)}


def dicom_ids(header):
    """The `DICOM_COLUMNS` of a row from a DICOM's header (all empty without one)."""
    return {column: (header or {}).get(field, "") for column, field in zip(DICOM_COLUMNS,
                                                                            ID_FIELDS)}


def scored_status(path, header):
    """``("ok", "")`` or, when a DICOM header says the film is not a paediatric
    frontal chest radiograph (`xray_features.dicom.header_warnings`),
    ``("warning", reason)``."""
    reasons = header_warnings(header) if header else []
    return ("warning", f"{path}: " + "; ".join(reasons)) if reasons else ("ok", "")


def _threshold_text(threshold):
    return f"{float(threshold):.6f}"


def content_error(image):
    """Why ``image`` (a 2-D array in [0, 1]) is not worth scoring, or None.

    A film whose standard deviation is below `BLANK_STD` (uniform grey, all
    black, a DICOM whose rescale slope is 0) has no content. Large images are
    measured on a regular subsample of about a million pixels.
    """
    step = max(1, int(math.sqrt(image.size / 1_000_000)))
    spread = float(np.std(image[::step, ::step], dtype=np.float64))
    if not spread >= BLANK_STD:
        return (f"no image content: the film is uniform (pixel standard deviation {spread:.4f} "
                f"< {BLANK_STD} on a 0-1 scale)")
    return None


def _describe(path, exc):
    text = str(exc)
    if isinstance(exc, XrayReadError):
        return text
    kind = "not enough memory" if isinstance(exc, MemoryError) else type(exc).__name__
    return f"{path}: {kind}: {text}" if text else f"{path}: {kind}"


def _checked_probability(path, value):
    """``value`` as a float, or the error message when it is no probability."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None, f"{path}: the model returned a non-numeric probability {value!r}"
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        return None, (f"{path}: the model returned an invalid probability ({p!r}); not scored, "
                      "check the model")
    return p, None


def probabilities_of(model, paths, max_batch_pixels=DEFAULT_BATCH_PIXELS, all_classes=False,
                     headers=None):
    """The PNEUMONIA probability of each path (None where it failed) and
    ``{index: error message}`` for the failures; never raises for a bad image.
    With ``all_classes``, each probability is the row of every class's (a
    three-class model's).

    Parameters
    ----------
    model : sklearn.pipeline.Pipeline
        Starts with `xray_features.io.ReadImages`.
    paths : sequence of str
    max_batch_pixels : int
        Decoded pixels held at once: the images are scored in groups cut
        where the next image would pass this (one image at least).
    all_classes : bool
        Return every class's probability, not only PNEUMONIA's.
    headers : dict, optional
        Filled with ``{index: header}`` for the DICOMs read
        (`xray_features.io.read_xray_and_header`).

    Returns
    -------
    found : list of float or None
    errors : dict of int to str
        Unreadable files, films with no content (`content_error`) and
        probabilities that are not finite or outside [0, 1].
    """
    reader = model.steps[0][1]
    rest = model[1:]
    found, errors = [None] * len(paths), {}
    images, where, held = [], [], 0

    def flush():
        _score_images(rest, paths, images, where, found, errors, all_classes)
        images.clear()
        where.clear()

    for i, path in enumerate(paths):
        try:
            image, header = read_xray_and_header(path, max_pixels=reader.max_pixels,
                                                 min_side=reader.min_side)
            if header is not None and headers is not None:
                headers[i] = header
            problem = content_error(image)
        except Exception as exc:  # XrayReadError, MemoryError, anything unexpected
            errors[i] = _describe(path, exc)
            continue
        if problem:
            errors[i] = f"{path}: {problem}"
            continue
        if images and held + image.size > max_batch_pixels:
            flush()
            held = 0
        images.append(image)
        where.append(i)
        held += image.size
        del image
    if images:
        flush()
    return found, errors


def _score_images(rest, paths, images, where, found, errors, all_classes=False):
    try:
        rows = list(np.asarray(rest.predict_proba(images)))
        if len(rows) != len(images):
            raise ValueError(f"{len(rows)} probabilities for {len(images)} images")
    except Exception:  # isolate the image that breaks the batch
        rows = []
        for i, image in zip(where, images):
            try:
                rows.append(np.asarray(rest.predict_proba([image]))[0])
            except Exception as exc:
                rows.append(None)
                errors[i] = f"{paths[i]}: scoring failed: {_describe('', exc)[2:]}"
    for i, row in zip(where, rows):
        if i in errors:
            continue
        values = row if all_classes else row[1:2]
        checked = [_checked_probability(paths[i], value) for value in values]
        problem = next((message for _, message in checked if message), None)
        if problem:
            errors[i] = problem
        else:
            found[i] = np.array([p for p, _ in checked]) if all_classes else checked[0][0]


def score_paths(model, paths, max_batch_pixels=DEFAULT_BATCH_PIXELS):
    """Score one batch of paths; returns one row dict per path, never raises
    for a bad image. A three-class model's rows have other columns
    (`score_rows`)."""
    if is_multiclass(model):
        return score_rows(model, paths, max_batch_pixels)
    threshold = model.steps[-1][1].threshold_
    headers = {}
    found, errors = probabilities_of(model, paths, max_batch_pixels, headers=headers)
    return [_row(path, threshold, "error", errors[i], header=headers.get(i)) if i in errors
            else _row(path, threshold, *scored_status(path, headers.get(i)),
                      probability=found[i], header=headers.get(i))
            for i, path in enumerate(paths)]


def score_columns(classes):
    """The CSV columns of `score_rows` for ``classes``: one probability column per class."""
    return (["path"] + [f"p_{str(c).lower()}" for c in classes]
            + ["prediction", "model", "status", "error"] + list(DICOM_COLUMNS))


def score_rows(model, paths, max_batch_pixels=None):
    """`pipelines.score` rows of a multi-class pipeline: ``path``, ``p_<class>``
    per class (e.g. ``p_normal,p_bacterial,p_viral``), ``prediction`` (the
    class by the model's decision rule), ``model`` (left empty: the scoring
    run writes its model id), ``status`` (``ok``, ``warning`` or ``error``),
    ``error`` and the DICOM identifiers, as the binary rows have them; never
    raises for a bad image."""
    last = model.steps[-1][1]
    columns = score_columns(last.classes_)
    headers = {}
    found, errors = probabilities_of(model, paths, max_batch_pixels or DEFAULT_BATCH_PIXELS,
                                     all_classes=True, headers=headers)
    rows = []
    for i, path in enumerate(paths):
        row = dict.fromkeys(columns, "")
        row.update(path=path, **dicom_ids(headers.get(i)))
        if i in errors:
            row.update(status="error", error=errors[i])
        else:
            proba = np.asarray(found[i], dtype=np.float64)[None, :]
            code = decide(proba, last.threshold_, last.subtype_threshold_, last.decision)[0]
            status, reason = scored_status(path, headers.get(i))
            row.update({c: f"{p:.6f}" for c, p in zip(columns[1:], proba[0])},
                       prediction=str(last.classes_[code]), status=status, error=reason)
        rows.append(row)
    return rows
