"""Score chest X-ray files with a saved pipeline; one CSV row per input.

Example::

    python -m pipelines.score xrays/ --out scores.csv

``--model`` is a saved ``.joblib`` pipeline (checked against its ``.sha256``
sidecar before it is unpickled) or a folder written by ``pipelines.export``
(ONNX + JSON: nothing is unpickled).

Inputs are files, folders (searched recursively, symbolic links to folders
followed, each folder once; hidden files skipped, and so are this run's own
output files and, unless ``--strict``, files that are not images: not named
.jpg/.jpeg/.png/.dcm/... and not starting like a JPEG, PNG or DICOM) and list
files (a ``.txt`` or ``.lst`` argument holds one path per line, relative paths
taken from the list's folder; a line starting with ``# `` or holding only
``#`` is a comment). Every input gets exactly one row, in input order, with
``status`` ``ok``, ``warning`` (scored, but the DICOM header names another
modality, body part or view, or an age outside 0-17 years) or ``error``, and
the reason. The columns are ``path, probability, prediction, threshold, model,
status, error, sop_instance_uid, study_instance_uid, accession_number``:
``prediction`` is the predicted class, ``model`` the first 12 hex digits of
the model's sha256, the last three a DICOM's identifiers (empty for other
files). A film with no image content (uniform: blank, all black) and a
probability the model cannot give (not finite, outside [0, 1])
are errors, never a score. File names are written byte for byte: a name that
is not valid UTF-8 keeps its raw bytes (Python's ``surrogateescape``). A
``path``, ``error`` or identifier field starting with ``= + - @``, a tab, a carriage
return or ``'`` gets a ``'`` in front, so a spreadsheet shows it as text; a
resume strips it again.

The CSV is rewritten atomically (temporary file + rename) as work progresses,
so it is always a valid CSV. Images are decoded and scored in batches of at
most ``--batch-size`` files and ``--batch-pixels`` decoded pixels. A lock file
(``<out>.lock``, removed when the run ends) refuses a second run on the same
output; temporary files a killed run left behind are removed by the next one.
``--out`` may not be an input, a list file, the model, or anything but a
regular file.

Beside the CSV, ``<out>.run.json`` records which model scored it (path,
sha256, feature set, head, threshold, site adjustments), the run's counts and
a sha256 of the CSV's rows. It is rewritten just before every CSV write, and
keeps the previous (model, rows) pair, so whichever of the two CSVs a kill
leaves, the record names the model that wrote its rows. ``--resume`` keeps
rows only when the record proves they come from the same model (it refuses,
exit 2, rows of another model), matches paths after normalising them
(relative or absolute), checks every kept row, keeps rows of inputs not given
this time (after the others), and says what it kept and what it rescores.
``--retry-errors`` also scores the error rows again. A CSV of the previous
layout (with ``label``) is resumed too, its kept rows rewritten in the new one.

Exit codes: 0 every input was scored (warnings included); 1 at least one input has
``status=error``; 2 bad usage (including a bad list file or ``--out``), a
refused model, another run holds the output's lock, ``--resume`` with another
model than the CSV's, or an internal error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import json
import math
import os
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from xray_features.cnn import MODELS_DIR
from xray_features.io import looks_like_xray

from .multiclass import is_multiclass
from .onnx_model import MANIFEST, load_onnx_model
from .persist import (ModelFileError, atomic_write_bytes, check_decision_numbers, load_model,
                      packaged_model_file, sha256_of)
from .scoring import (BLANK_STD, DEFAULT_BATCH_PIXELS, DICOM_COLUMNS, LABEL_NAMES,  # noqa: F401
                      _threshold_text, content_error, probabilities_of, score_columns,
                      score_paths)

__all__ = ["DEFAULT_MODEL", "COLUMNS", "LEGACY_COLUMNS", "BLANK_STD", "DEFAULT_BATCH_PIXELS",
           "IMAGE_SUFFIXES", "InputListError", "Inputs", "scan_inputs", "expand_inputs",
           "content_error", "probabilities_of", "score_paths", "model_id", "main"]

DEFAULT_MODEL = MODELS_DIR / "default_pipeline.joblib"
COLUMNS = ("path", "probability", "prediction", "threshold", "model", "status",
           "error") + DICOM_COLUMNS
"""A binary score CSV's columns: ``prediction`` is the predicted class (NORMAL or
PNEUMONIA at ``threshold``), ``model`` the first 12 hex digits of the model's
sha256 (`model_id`); ``status`` is ``ok``, ``warning`` (scored, but the DICOM
header says the film is not what the model was trained on; ``error`` holds the
reason) or ``error``."""
LEGACY_COLUMNS = ("path", "probability", "prediction", "label", "status", "error")
"""The columns before 2026-11-29 (``label``: the predicted 0/1); ``--resume``
reads them and writes the kept rows in `COLUMNS`."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".dcm", ".dicom", ".dic")
"""Files in a folder with these extensions always get a row; any other file
gets one only when its first bytes are a JPEG, PNG or DICOM."""
MODEL_ID_LENGTH = 12
STATUSES = ("ok", "warning", "error")
LIST_SUFFIXES = (".txt", ".lst")
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_TEXT_COLUMNS = ("path", "error") + DICOM_COLUMNS  # free text: escaped for spreadsheets
_ENCODING = ("utf-8", "surrogateescape")  # file names are bytes; keep them byte for byte


class InputListError(OSError):
    """A list file that cannot be read as a list of paths."""


class UsageError(RuntimeError):
    """Bad arguments (exit 2)."""


# ---- inputs ------------------------------------------------------------------------------

class Inputs(NamedTuple):
    """What `scan_inputs` found: the paths to score, and the files of folders
    that were left out because they are not images."""

    paths: list
    skipped: list


def scan_inputs(arguments, exclude=(), strict=False):
    """Files, folders and list files -> the paths to score, in order, and the
    non-image files of folders that were skipped.

    Parameters
    ----------
    arguments : sequence of str
        Image files, folders and ``.txt``/``.lst`` list files (see
        `read_list`). A folder is searched recursively and sorted; hidden
        entries are skipped; symbolic links to folders are followed, each
        folder once (a link back to a folder already walked, a loop, is not
        followed again). A file named on the command line or in a list always
        gets a row.
    exclude : iterable of path
        Files never taken from a folder (the run's own outputs).
    strict : bool
        Give every file of a folder a row. By default a file of a folder
        whose extension is not one of `IMAGE_SUFFIXES` is skipped when its
        first bytes are not a JPEG, PNG or DICOM (`looks_like_xray`): a
        ``notes.txt`` is skipped, an extensionless DICOM is scored, a broken
        ``.png`` gets its error row.

    Returns
    -------
    Inputs
    """
    excluded = {os.path.realpath(p) for p in exclude}
    excluded_names = {os.path.basename(p) for p in excluded}
    paths, skipped = [], []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            for found in _folder_files(path):
                if os.path.basename(found) in excluded_names \
                        and os.path.realpath(found) in excluded:
                    continue
                if strict or found.lower().endswith(IMAGE_SUFFIXES) or looks_like_xray(found):
                    paths.append(found)
                else:
                    skipped.append(found)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            paths += read_list(path)
        else:
            paths.append(str(path))  # a missing file still gets its error row
    return Inputs(paths, skipped)


def expand_inputs(arguments, exclude=(), strict=False):
    """The paths `scan_inputs` finds (a list of str), without the skipped files."""
    return scan_inputs(arguments, exclude, strict).paths


def _folder_files(root):
    """Every non-hidden entry below ``root`` that is not a folder, sorted;
    symbolic links to folders are followed, each real folder walked once."""
    walked, files = {os.path.realpath(root)}, []
    for folder, folders, names in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(folders):
            real = os.path.realpath(os.path.join(folder, name))
            if not name.startswith(".") and real not in walked:
                walked.add(real)
                keep.append(name)
        folders[:] = keep  # os.walk descends only into these
        files += [str(Path(folder) / name) for name in names if not name.startswith(".")]
    return sorted(files)


def read_list(path):
    """The paths a list file names, one per line.

    Lines end at ``\\n`` only (so names holding U+0085 or U+2028 stay whole);
    a leading UTF-8 byte-order mark, a trailing ``\\r`` and surrounding ASCII
    blanks are dropped; bytes that are not UTF-8 are kept as they are (file
    names are bytes). Blank lines, and lines that are ``#`` or start with
    ``# `` are comments; any other line is a path, ``#name.jpeg`` included.
    Relative paths are taken from the list's folder.

    Raises
    ------
    InputListError
        The list cannot be read, or is UTF-16/32 text.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputListError(f"{path}: cannot read the list ({exc.strerror or exc})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (b"\0\0" in data[:4096]
                                                       and b"\0" in data[:2]):
        raise InputListError(f"{path}: the list is UTF-16 or UTF-32 text; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    paths = []
    for raw in data.split(b"\n"):
        line = os.fsdecode(raw.strip(b" \t\r\f\v"))
        if not line or line == "#" or line.startswith("# "):
            continue
        listed = Path(line)
        paths.append(str(listed if listed.is_absolute() else path.parent / listed))
    return paths


def _list_files(arguments):
    return [a for a in arguments
            if Path(a).suffix.lower() in LIST_SUFFIXES and Path(a).is_file()]


# ---- the CSV -----------------------------------------------------------------------------

def _escaped(text):
    """A field a spreadsheet shows as text: a ``'`` before a leading = + - @ tab CR or '."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _unescaped(text):
    return text[1:] if text.startswith("'") else text


def _csv_bytes(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else COLUMNS,
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, **{c: _escaped(row[c]) for c in _TEXT_COLUMNS if c in row}}
                     for row in rows)
    return buffer.getvalue().encode(*_ENCODING)


def _read_rows(out):
    """The rows of a score CSV (BOM, CRLF and quoting tolerated; the ``'``
    escape removed), or None when ``out`` does not exist.

    Raises
    ------
    UsageError
        ``out`` is not a score CSV.
    """
    try:
        data = Path(out).read_bytes()
    except FileNotFoundError:
        return None
    text = data.decode(*_ENCODING)
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            return []
        if not _is_score_header(header):
            raise UsageError(f"{out} is not a score CSV (its header is {header!r}); "
                             "score into another --out")
        columns = tuple(header)
        rows = []
        for fields in reader:
            row = dict(zip(columns, fields + [""] * (len(columns) - len(fields))))
            row.update({c: _unescaped(row[c]) for c in _TEXT_COLUMNS if c in row})
            row["_fields"] = len(fields)
            rows.append(row)
    except csv.Error as exc:
        raise UsageError(f"{out}: unreadable CSV ({exc}); score into another --out") from None
    return rows


def _is_score_header(header):
    """A binary score CSV's `COLUMNS` or `LEGACY_COLUMNS`, or a three-class
    one's (``path, p_<class>..., prediction, [model,] status, error``)."""
    header = tuple(header)
    if header in (COLUMNS, LEGACY_COLUMNS):
        return True
    if header[-len(DICOM_COLUMNS):] == DICOM_COLUMNS:
        header = header[:-len(DICOM_COLUMNS)]
    tail = ("prediction", "model", "status", "error") if "model" in header \
        else ("prediction", "status", "error")
    return (len(header) >= len(tail) + 2 and header[0] == "path"
            and header[-len(tail):] == tail
            and all(c.startswith("p_") for c in header[1:-len(tail)]))


def _row_columns(row):
    return [column for column in row if not column.startswith("_")]


def _canonical(row):
    """A row as the run record's digest sees it: probabilities as 6 decimals and
    a label as an integer when they parse, so a spreadsheet's re-save matches."""
    fields = []
    for column in _row_columns(row):
        value = row.get(column, "")
        convert = (lambda v: f"{float(v):.6f}") if column in ("probability", "threshold") or \
            column.startswith("p_") else (lambda v: str(int(float(v)))) if column == "label" \
            else None
        try:
            value = convert(value) if convert and value != "" else value
        except (ValueError, OverflowError):
            pass
        fields.append(value)
    return "\x1f".join(fields)


def rows_sha256(rows):
    """The sha256 of rows (dicts with `COLUMNS`), as the run record holds it."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(_canonical(row).encode(*_ENCODING) + b"\x1e")
    return digest.hexdigest()


def _row_problem(row, threshold, identity):
    """Why a row read back from a CSV cannot be kept, or None. A row in the
    current layout must name this model (``identity``, its sha256) and
    threshold; a legacy row's ``label`` must agree with its prediction."""
    if row.get("_fields", len(_row_columns(row))) != len(_row_columns(row)):
        return "wrong number of fields"
    if "model" in row and row["model"] != model_id(identity):
        return f"scored by model {row['model'] or '(none)'}, not {model_id(identity)}"
    if "probability" not in row:
        return _class_row_problem(row)
    if not row["path"]:
        return "no path"
    if "threshold" in row and not _same_threshold(row["threshold"], threshold):
        return f"threshold {row['threshold']!r} is not the model's {threshold:.6f}"
    if row["status"] == "error":
        if row["probability"] or row["prediction"] or row.get("label") or not row["error"]:
            return "an error row with a score, or without a reason"
        return None
    if row["status"] not in STATUSES:
        return f"unknown status {row['status']!r}"
    try:
        p = float(row["probability"])
    except ValueError:
        return f"probability {row['probability']!r} is not a number"
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        return f"probability {row['probability']!r} is outside [0, 1]"
    if row["prediction"] not in LABEL_NAMES or row.get("label", "") != (
            str(LABEL_NAMES.index(row["prediction"])) if "label" in row else "") \
            or bool(row["error"]) != (row["status"] != "ok"):
        return (f"prediction {row['prediction']!r} / label {row.get('label')!r} are not a "
                "decision, or the reason does not fit the status")
    if abs(p - threshold) > 1e-6 and LABEL_NAMES[int(p >= threshold)] != row["prediction"]:
        return f"prediction {row['prediction']} disagrees with the threshold {threshold:.6f}"
    return None


def _same_threshold(text, threshold):
    try:
        return abs(float(text) - float(threshold)) <= 1e-6
    except ValueError:
        return False


def _migrated(row, columns, threshold, identity):
    """A kept row in this run's ``columns``: a legacy row loses ``label`` (checked
    already) and gains this model's ``threshold`` and ``model``; columns it
    lacks are empty."""
    filled = {"threshold": _threshold_text(threshold) if threshold is not None else "",
              "model": model_id(identity)}
    return {c: row[c] if c in row else filled.get(c, "") for c in columns}


def _class_row_problem(row):
    """`_row_problem` for a three-class row: every ``p_<class>`` a probability,
    together summing to 1, and the prediction one of the classes."""
    if not row["path"]:
        return "no path"
    columns = [c for c in row if c.startswith("p_")]
    if row["status"] == "error":
        if any(row[c] for c in columns) or row["prediction"] or not row["error"]:
            return "an error row with a score, or without a reason"
        return None
    if row["status"] not in STATUSES or bool(row["error"]) != (row["status"] != "ok"):
        return f"unknown status {row['status']!r}, or a reason that does not fit it"
    try:
        p = [float(row[c]) for c in columns]
    except ValueError:
        return "a class probability is not a number"
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in p) or abs(sum(p) - 1) > 1e-4:
        return "the class probabilities are not a distribution"
    if row["prediction"] not in [c[2:].upper() for c in columns]:
        return f"prediction {row['prediction']!r} is not one of the classes"
    return None


# ---- the lock, the run record, --out -----------------------------------------------------

@contextmanager
def _exclusive_lock(out):
    """Hold ``<out>.lock`` (an OS lock: the kernel drops it when the holder
    dies) while the block runs; the file is removed when the block ends,
    however it ends short of a kill.

    Raises
    ------
    RuntimeError
        Another process holds the lock.
    """
    lock_path = Path(str(out) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = _acquire(lock_path, out)
    try:
        yield
    finally:
        _release(handle, lock_path)


def _acquire(lock_path, out):
    for _ in range(100):
        handle = open(lock_path, "a+b")
        if not _try_lock(handle):
            handle.close()
            raise RuntimeError(f"{out} is being written by another scoring run "
                               f"(lock {lock_path} is held); wait for it or use another --out")
        try:  # the holder before us may have removed the file as we locked it
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path)):
                return handle
        except FileNotFoundError:
            pass
        _unlock(handle)
        handle.close()
    raise RuntimeError(f"could not take the lock {lock_path}: it keeps being replaced")


def _try_lock(handle):
    """Lock ``handle`` without waiting (False: another process holds it). The
    platform's module is imported here, so this module imports everywhere."""
    if os.name == "nt":
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _unlock(handle):
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_UN)


def _release(handle, lock_path):
    """Remove the lock file and unlock. On POSIX it is removed while still held
    (a run that opened it meanwhile sees it replaced and retries, `_acquire`);
    Windows cannot remove an open file, so there it goes after the unlock."""
    try:
        if os.name != "nt":
            lock_path.unlink(missing_ok=True)
        _unlock(handle)
    finally:
        handle.close()
    if os.name == "nt":
        try:
            lock_path.unlink()
        except OSError:
            pass  # another run has it open (or holds it now)


def model_id(identity):
    """The short model id written on every row: the first 12 hex digits of its sha256."""
    return identity[:MODEL_ID_LENGTH]


def model_sha256(model_path):
    """What identifies a model file: the sha256 of the ``.joblib`` file, or of an
    export folder's ``model.json`` (which pins every other file's sha256)."""
    path = Path(model_path)
    return sha256_of(path / MANIFEST if path.is_dir() else path)


def run_record_path(out):
    """``<out>.run.json``: the record of which model wrote the rows of ``out``."""
    return Path(str(out) + ".run.json")


def _output_files(out):
    return [Path(out), Path(str(out) + ".lock"), run_record_path(out)]


def check_out(out, paths, list_files, model_path):
    """Refuse an ``--out`` whose CSV, lock or record would clobber something.

    Raises
    ------
    UsageError
        One of them is a symlink or not a regular file, or is an input, a
        list file, the model (or a file of its export folder) or its sidecar.
    """
    outputs = _output_files(out)
    for output in outputs:
        if output.is_symlink():
            raise UsageError(f"--out {out}: {output} is a symbolic link; refusing to replace it")
        try:
            mode = output.stat().st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot check {output} ({exc.strerror})") from None
        if not stat.S_ISREG(mode):
            raise UsageError(f"--out {out}: {output} exists and is not a regular file; "
                             "refusing to replace it")
    model_path = Path(model_path)
    protected = [model_path, Path(str(model_path) + ".sha256")] + [Path(p) for p in list_files]
    model_dir = os.path.realpath(model_path) if model_path.is_dir() else None
    real_outputs = {os.path.realpath(o): o for o in outputs}
    for output in real_outputs:
        if model_dir and os.path.dirname(output) == model_dir:
            raise UsageError(f"--out {out}: it would write into the model folder {model_path}")
    for path in protected:
        if os.path.realpath(path) in real_outputs:
            raise UsageError(f"--out {out}: it would overwrite {path} (the model or a list)")
    identities = {}
    for output in outputs:
        try:
            info = output.stat()
            identities[(info.st_dev, info.st_ino)] = output
        except OSError:
            pass
    lexical = {os.path.abspath(o) for o in outputs}
    for path in paths:
        clash = os.path.abspath(path) in lexical
        if not clash and identities:
            try:
                info = os.stat(path)
                clash = (info.st_dev, info.st_ino) in identities
            except (OSError, ValueError):
                pass
        if clash:
            raise UsageError(f"--out {out}: it would overwrite the input {path}")


def _read_record(out):
    record_path = run_record_path(out)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{record_path}: unreadable run record ({exc}); score into "
                           "another --out") from None
    if not isinstance(record, dict):
        raise RuntimeError(f"{record_path}: unreadable run record (not an object); score into "
                           "another --out")
    return record


def _owner(record, digest):
    """(model path, model sha256) that wrote rows with ``digest``, per the record;
    None when the record does not describe them."""
    for pair in (record, record.get("previous") or {}):
        if isinstance(pair, dict) and pair.get("rows_sha256") == digest \
                and pair.get("model_sha256"):
            return pair.get("model"), pair["model_sha256"]
    return None


def _key(path, cwd):
    return os.path.normpath(os.path.join(cwd, path))


class _Output:
    """The CSV and its run record, written as a pair: the record first (naming
    this model and the rows about to be written, and the pair on disk before),
    then the CSV."""

    def __init__(self, out, model_path, identity, model, metadata, n_inputs, previous,
                 skipped=0):
        self.out = out
        self.skipped = skipped
        self.base = {
            "model": str(model_path), "model_sha256": identity, "model_id": model_id(identity),
            "feature_set": metadata.get("feature_set"), "head": metadata.get("head"),
            "threshold": float(model.steps[-1][1].threshold_),
            "site_adjustments": _site_adjustments(metadata).lstrip(", ") or None,
            "cwd": os.getcwd(), "inputs": n_inputs,
        }
        self.previous = previous

    def write(self, rows, final=False):
        record = dict(self.base)
        if final:
            for status, count in (("ok", "ok"), ("warning", "warnings"), ("error", "errors")):
                record[count] = sum(row["status"] == status for row in rows)
            record["skipped"] = self.skipped
        record["rows"] = len(rows)
        record["rows_sha256"] = rows_sha256(rows)
        record["previous"] = self.previous
        record["written"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        atomic_write_bytes(run_record_path(self.out),
                           (json.dumps(record, indent=2) + "\n").encode())
        atomic_write_bytes(self.out, _csv_bytes(rows))
        self.previous = {"model": record["model"], "model_sha256": record["model_sha256"],
                         "rows_sha256": record["rows_sha256"]}


def _prepare(out, paths, model_path, identity, threshold, resume, columns, retry_errors=False):
    """What is on disk at ``out``: the rows kept for this run (None: to score),
    rows of other inputs kept after them (both in ``columns``), the (model,
    rows) pair on disk, and the lines that tell the user what happened. With
    ``retry_errors``, error rows are not kept."""
    existing = _read_rows(out)
    if existing is None:
        return [None] * len(paths), [], None, []
    try:
        record = _read_record(out)
    except RuntimeError:
        if resume:
            raise
        record = None  # a fresh run replaces it
    digest = rows_sha256(existing)
    owner = _owner(record, digest) if record else None
    on_disk = {"model": owner[0] if owner else None, "model_sha256": owner[1] if owner else None,
               "rows_sha256": digest}
    if not resume:
        return [None] * len(paths), [], on_disk, []
    notes = []
    if record is None:
        if existing and "model" not in existing[0]:
            notes.append(f"warning: {out} has no run record ({run_record_path(out).name}) and "
                         f"its rows name no model; none of its {len(existing)} rows is kept and "
                         "every input is scored again")
            return [None] * len(paths), [], on_disk, notes
        notes.append(f"warning: {out} has no run record ({run_record_path(out).name}); its rows "
                     "are kept where their model column names this model")
        cwd = os.getcwd()
    else:
        if owner is None and record.get("model_sha256") == identity:
            notes.append(f"warning: the rows of {out} do not match its run record (changed since "
                         f"they were written?); none of its {len(existing)} rows is kept and "
                         "every input is scored again")
            return [None] * len(paths), [], on_disk, notes
        name, sha = owner if owner else (record.get("model"), record.get("model_sha256"))
        if sha != identity:
            raise RuntimeError(
                f"{out} holds rows scored by {name} (sha256 {str(sha)[:12]}…); --resume with "
                f"{model_path} (sha256 {identity[:12]}…) would mix two models' rows: resume "
                "with that model, or score into another --out")
        cwd = record.get("cwd") if isinstance(record.get("cwd"), str) else os.getcwd()
    here = os.getcwd()
    wanted = {_key(path, here) for path in paths}  # the inputs of this run
    done, invalid, order, retried = {}, [], {}, set()
    for row in existing:
        problem = _row_problem(row, threshold, identity)
        if problem:
            invalid.append(f"{row['path'] or '(no path)'}: {problem}")
            continue
        key = _key(row["path"], cwd)
        if retry_errors and row["status"] == "error" and key in wanted:
            retried.add(key)  # scored again; an error row of another input stays
            done.pop(key, None)
            continue
        order.setdefault(key)  # first place of the path in the CSV
        done[key] = _migrated(row, columns, threshold, identity)
    rows, used = [], set()
    for path in paths:
        key = _key(path, here)
        row = done.get(key)
        if row is not None:
            used.add(key)
            if row["path"] != path:  # the same file, named another way this time
                if row["error"].startswith(row["path"] + ": "):
                    row = {**row, "error": path + row["error"][len(row["path"]):]}
                row = {**row, "path": path}
        rows.append(row)
    others = [done[key] for key in order if key in done and key not in used]
    n_kept = sum(row is not None for row in rows)
    notes.append(f"resume: kept {n_kept} rows of {out}, {len(paths) - n_kept} inputs to score"
                 + (f"; {len(others)} rows of inputs not given this time are kept after them"
                    if others else ""))
    if retried:
        notes.append(f"resume: {len(retried)} error rows not kept (--retry-errors): scored again")
    if existing and "label" in existing[0]:
        notes.append(f"resume: {out} has the old columns ({','.join(LEGACY_COLUMNS)}); its kept "
                     f"rows are written as {','.join(columns)}")
    if invalid:
        notes.append(f"resume: {len(invalid)} invalid rows not kept (their inputs are scored "
                     "again): " + "; ".join(invalid[:5]) + (" …" if len(invalid) > 5 else ""))
    return rows, others, on_disk, notes


def _remove_stale_temporaries(out):
    """Delete temporary files a killed run left (only call while holding the lock)."""
    out = Path(out)
    for name in (out.name, run_record_path(out).name):
        prefix = f".{name}."
        for path in out.parent.iterdir() if out.parent.is_dir() else []:
            if path.name.startswith(prefix) and path.name.endswith(".tmp") and path.is_file():
                path.unlink(missing_ok=True)


# ---- the command line --------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad usage: one line on stderr, exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser():
    """The argument parser of ``python -m pipelines.score``."""
    parser = _Parser(
        prog="python -m pipelines.score", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders, or .txt/.lst files listing paths")
    parser.add_argument("--model", default=None,
                        help="a saved pipeline (.joblib with its .sha256 sidecar) or a folder "
                        "from pipelines.export (no unpickling), or the bare name of a packaged "
                        "one (default_pipeline_fp32.joblib: the default's network in fp32); "
                        "default: the packaged model (xray_features/models/"
                        "default_pipeline.joblib, see its model card)")
    parser.add_argument("--out", default="scores.csv", help="output CSV (default scores.csv)")
    parser.add_argument("--resume", action="store_true",
                        help="keep rows already in --out (from the same model) and score only "
                        "the rest")
    parser.add_argument("--retry-errors", action="store_true",
                        help="with --resume (implied): score the rows with status=error again")
    parser.add_argument("--strict", action="store_true",
                        help="give every file in a folder a row; by default files that are not "
                        "images (notes.txt, .csv, .json: by extension and first bytes) are "
                        "skipped and counted")
    parser.add_argument("--batch-size", type=_positive_int, default=64,
                        help="images per batch (default 64)")
    parser.add_argument("--batch-pixels", type=_positive_int, default=DEFAULT_BATCH_PIXELS,
                        help="decoded pixels held at once; a batch is cut where the next image "
                        f"would pass it (default {DEFAULT_BATCH_PIXELS:,})")
    parser.add_argument("--checkpoint-seconds", type=_seconds, default=5.0,
                        help="rewrite the CSV at most this often while scoring")
    parser.add_argument("--dask", metavar="ADDRESS|local", default=None,
                        help="score on a Dask cluster: 'local' (on this machine) or a scheduler "
                        "address like tcp://host:8786; needs pip install 'xray-hybrid[dask]'")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    """Score the inputs of ``argv``; returns the exit code (0, 1 or 2, see the module)."""
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (ModelFileError, UsageError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a bug: one line, never a traceback
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _load(model_path):
    """The model at ``model_path`` and its metadata; `load_model` checks a
    joblib file's decision numbers itself, an export's are checked here."""
    if not model_path.is_dir():
        return load_model(model_path)
    model, metadata = load_onnx_model(model_path)
    check_decision_numbers(model, model_path)
    return model, metadata


def _main(args):
    model_path = packaged_model_file(args.model) if args.model else DEFAULT_MODEL
    model, metadata = _load(model_path)
    if args.dask and model_path.is_dir():
        raise UsageError("--dask needs a .joblib model")
    paths, skipped = scan_inputs(args.inputs, exclude=_output_files(args.out),
                                 strict=args.strict)
    if not paths:
        raise UsageError("no input files found" + (
            f" ({len(skipped)} files that are not images skipped; --strict scores them)"
            if skipped else ""))
    check_out(args.out, paths, _list_files(args.inputs), model_path)
    identity = model_sha256(model_path)
    threshold = model.steps[-1][1].threshold_
    columns = score_columns(model.steps[-1][1].classes_) if is_multiclass(model) else COLUMNS
    try:
        with _exclusive_lock(args.out):
            _remove_stale_temporaries(args.out)
            rows, others, on_disk, notes = _prepare(
                args.out, paths, model_path, identity, threshold,
                args.resume or args.retry_errors, columns, args.retry_errors)
            for note in notes:
                print(note, file=sys.stderr)
            output = _Output(args.out, model_path, identity, model, metadata, len(paths),
                             on_disk, len(skipped))
            score_all = _score_all_dask if args.dask else _score_all
            rows = score_all(model if not args.dask else model_path, paths, rows, others,
                             output, args, model_id(identity))
    except ImportError as exc:  # the dask extra is missing: the message names it
        raise UsageError(str(exc)) from None
    failed = sum(row["status"] == "error" for row in rows[:len(paths)])
    warned = sum(row["status"] == "warning" for row in rows[:len(paths)])
    print(f"scored {len(paths) - failed} of {len(paths)} inputs with {model_path.name} "
          f"(model {model_id(identity)}, {metadata.get('feature_set')}/{metadata.get('head')}, "
          f"threshold {threshold:.3f}{_site_adjustments(metadata)}); "
          + (f"{warned} warnings (status=warning: scored, but the DICOM header says the film "
             "is not a paediatric frontal chest radiograph); " if warned else "")
          + f"{failed} errors"
          + (f"; {len(skipped)} files that are not images skipped (--strict gives them rows)"
             if skipped else "") + f"; wrote {args.out}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _site_adjustments(metadata):
    """How `pipelines.calibrate` adapted the model to a site, for the summary line."""
    notes = []
    if metadata.get("site_calibration"):
        notes.append(f"recalibrated on {metadata['site_calibration']['n']} site images")
    correction = metadata.get("prior_correction")
    if correction:
        notes.append(f"probabilities for a prevalence of {correction['prevalence']:.3f}")
        if correction.get("unlabelled"):
            notes.append(f"threshold from {correction['unlabelled']['n']} unlabelled site films")
    return "".join(f", {note}" for note in notes)


def _stamped(row, identity):
    """A freshly scored row with the run's model id."""
    return {**row, "model": identity}


def _score_all_dask(model_path, paths, rows, others, output, args, identity):
    from .dask_scoring import score_on_dask

    todo = [i for i, row in enumerate(rows) if row is None]
    scored = score_on_dask(model_path, [paths[i] for i in todo], scheduler=args.dask,
                           batch_size=args.batch_size)
    for i, row in zip(todo, scored):
        rows[i] = _stamped(row, identity)
    rows = rows + others
    output.write(rows, final=True)
    return rows


def _score_all(model, paths, rows, others, output, args, identity):
    todo = [i for i, row in enumerate(rows) if row is None]
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", desc="scoring",
               disable=args.quiet, file=sys.stderr)
    last_write = time.monotonic()
    for start in range(0, len(todo), args.batch_size):
        batch = todo[start:start + args.batch_size]
        for i, row in zip(batch, score_paths(model, [paths[i] for i in batch],
                                             max_batch_pixels=args.batch_pixels)):
            rows[i] = _stamped(row, identity)
        bar.update(len(batch))
        if time.monotonic() - last_write >= args.checkpoint_seconds:
            output.write([r for r in rows if r is not None] + others)
            last_write = time.monotonic()
    bar.close()
    rows = rows + others
    output.write(rows, final=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
