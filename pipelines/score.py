"""Score chest X-ray files with a saved pipeline; one CSV row per input.

Example::

    python -m pipelines.score xrays/ --out scores.csv

``--model`` is a saved ``.joblib`` pipeline (checked against its ``.sha256``
sidecar before it is unpickled) or a folder written by ``pipelines.export``
(ONNX + JSON: nothing is unpickled).

Inputs are files, folders (searched recursively; hidden files skipped) and
list files (a ``.txt`` or ``.lst`` argument holds one path per line, relative
paths taken from the list's folder). Every input gets exactly one row, in
input order, with ``status`` ``ok`` or ``error`` and the reason. The CSV is
rewritten atomically (temporary file + rename) as work progresses, so it is
always a valid CSV; ``--resume`` keeps the rows already there. A lock file
(``<out>.lock``) refuses a second run on the same output; temporary files a
killed run left behind are removed by the next one.

Beside the CSV, ``<out>.run.json`` records which model scored it (path,
sha256, feature set, head, threshold, site adjustments) and the run's counts.
``--resume`` refuses to add rows from another model to a CSV whose record
names a different one.

Exit codes: 0 every input was scored; 1 at least one input has
``status=error``; 2 bad usage, unreadable model, another run holds the
output's lock, or ``--resume`` with another model than the CSV's.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import io
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from xray_features.cnn import MODELS_DIR
from xray_features.io import read_xray

from .multiclass import is_multiclass, score_rows
from .onnx_model import MANIFEST, load_onnx_model
from .persist import ModelFileError, atomic_write_bytes, load_model, sha256_of

__all__ = ["DEFAULT_MODEL", "COLUMNS", "expand_inputs", "score_paths", "main"]

DEFAULT_MODEL = MODELS_DIR / "default_pipeline.joblib"
COLUMNS = ("path", "probability", "prediction", "label", "status", "error")
LIST_SUFFIXES = (".txt", ".lst")
LABEL_NAMES = ("NORMAL", "PNEUMONIA")
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def expand_inputs(arguments):
    """Files, folders and list files -> an ordered list of paths (as given)."""
    paths = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*")
                            if not any(part.startswith(".") for part in p.relative_to(path).parts)
                            and (p.is_file() or p.is_symlink()))
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    listed = Path(line)
                    paths.append(str(listed if listed.is_absolute() else path.parent / listed))
        else:
            paths.append(str(path))  # a missing file still gets its error row
    return paths


def _error_row(path, message):
    return {"path": path, "probability": "", "prediction": "", "label": "",
            "status": "error", "error": message}


def _ok_row(path, probability, threshold):
    label = int(probability >= threshold)
    return {"path": path, "probability": f"{probability:.6f}", "prediction": LABEL_NAMES[label],
            "label": str(label), "status": "ok", "error": ""}


def probabilities_of(model, paths, all_classes=False):
    """The PNEUMONIA probability of each path (None where it failed) and
    ``{index: error message}`` for the failures; never raises for a bad image.
    With ``all_classes``, each probability is the row of every class's."""
    pick = (lambda row: row) if all_classes else (lambda row: float(row[1]))
    reader = model.steps[0][1]
    rest = model[1:]
    found, errors, images, where = [None] * len(paths), {}, [], []
    for i, path in enumerate(paths):
        try:
            images.append(read_xray(path, max_pixels=reader.max_pixels, min_side=reader.min_side))
            where.append(i)
        except Exception as exc:  # XrayReadError, or anything unexpected
            errors[i] = str(exc)
    if images:
        try:
            for i, row in zip(where, rest.predict_proba(images)):
                found[i] = pick(row)
        except Exception:  # isolate the image that breaks the batch
            for i, image in zip(where, images):
                try:
                    found[i] = pick(rest.predict_proba([image])[0])
                except Exception as exc:
                    errors[i] = f"{paths[i]}: scoring failed: {exc}"
    return found, errors


def score_paths(model, paths):
    """Score one batch of paths; returns one row dict per path, never raises
    for a bad image. A three-class model's rows have other columns
    (`pipelines.multiclass.score_rows`)."""
    if is_multiclass(model):
        return score_rows(model, paths)
    threshold = model.steps[-1][1].threshold_
    found, errors = probabilities_of(model, paths)
    return [_error_row(path, errors[i]) if i in errors else _ok_row(path, found[i], threshold)
            for i, path in enumerate(paths)]


def _csv_bytes(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else COLUMNS,
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _read_done(out):
    try:
        with open(out, newline="", encoding="utf-8") as handle:
            return {row["path"]: row for row in csv.DictReader(handle)
                    if row.get("status") in ("ok", "error")}
    except (OSError, csv.Error, KeyError, UnicodeDecodeError):
        return {}


@contextmanager
def _exclusive_lock(out):
    lock_path = Path(str(out) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"{out} is being written by another scoring run "
                           f"(lock {lock_path} is held); wait for it or use another --out")
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def model_sha256(model_path):
    """What identifies a model file: the sha256 of the ``.joblib`` file, or of an
    export folder's ``model.json`` (which pins every other file's sha256)."""
    path = Path(model_path)
    return sha256_of(path / MANIFEST if path.is_dir() else path)


def run_record_path(out):
    return Path(str(out) + ".run.json")


def _check_resume_model(out, model_path, identity):
    """Refuse to add ``model_path``'s rows to an ``out`` another model wrote."""
    if not Path(out).exists():
        return
    record_path = run_record_path(out)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"warning: {out} has no run record ({record_path.name}); its rows are kept "
              "without checking which model wrote them", file=sys.stderr)
        return
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{record_path}: unreadable run record ({exc}); score into "
                           "another --out") from None
    if record.get("model_sha256") != identity:
        raise RuntimeError(
            f"{out} holds rows scored by {record.get('model')} (sha256 "
            f"{str(record.get('model_sha256'))[:12]}…); --resume with {model_path} (sha256 "
            f"{identity[:12]}…) would mix two models' rows: resume with that model, or "
            "score into another --out")


def _write_run_record(out, model_path, identity, model, metadata, n_inputs, rows=None):
    record = {
        "model": str(model_path), "model_sha256": identity,
        "feature_set": metadata.get("feature_set"), "head": metadata.get("head"),
        "threshold": float(model.steps[-1][1].threshold_),
        "site_adjustments": _site_adjustments(metadata).lstrip(", ") or None,
        "inputs": n_inputs,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if rows is not None:
        record["ok"] = sum(row["status"] == "ok" for row in rows)
        record["errors"] = len(rows) - record["ok"]
    atomic_write_bytes(run_record_path(out), (json.dumps(record, indent=2) + "\n").encode())


def _remove_stale_temporaries(out):
    """Delete temporary CSVs a killed run left (only call while holding the lock)."""
    out = Path(out)
    prefix = f".{out.name}."
    for path in out.parent.iterdir() if out.parent.is_dir() else []:
        if path.name.startswith(prefix) and path.name.endswith(".tmp") and path.is_file():
            path.unlink(missing_ok=True)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.score", description=__doc__.split("\n\n")[0] + ".",
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders, or .txt/.lst files listing paths")
    parser.add_argument("--model", default=None,
                        help="a saved pipeline (.joblib with its .sha256 sidecar) or a folder "
                        "from pipelines.export (no unpickling); default: the packaged hog+cnn "
                        "model")
    parser.add_argument("--out", default="scores.csv", help="output CSV (default scores.csv)")
    parser.add_argument("--resume", action="store_true",
                        help="keep rows already in --out and score only the rest")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--checkpoint-seconds", type=float, default=5.0,
                        help="rewrite the CSV at most this often while scoring")
    parser.add_argument("--dask", metavar="ADDRESS|local", default=None,
                        help="score on a Dask cluster: 'local' (on this machine) or a scheduler "
                        "address like tcp://host:8786; needs pip install 'xray-hybrid[dask]'")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    try:
        if model_path.is_dir():
            model, metadata = load_onnx_model(model_path)
        else:
            model, metadata = load_model(model_path)
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dask and model_path.is_dir():
        print("error: --dask needs a .joblib model", file=sys.stderr)
        return EXIT_USAGE
    paths = expand_inputs(args.inputs)
    if not paths:
        print("error: no input files found", file=sys.stderr)
        return EXIT_USAGE
    identity = model_sha256(model_path)
    try:
        with _exclusive_lock(args.out):
            _remove_stale_temporaries(args.out)
            if args.resume:
                _check_resume_model(args.out, model_path, identity)
            _write_run_record(args.out, model_path, identity, model, metadata, len(paths))
            rows = (_score_all_dask(model_path, paths, args) if args.dask
                    else _score_all(model, paths, args))
            _write_run_record(args.out, model_path, identity, model, metadata, len(paths), rows)
    except ImportError as exc:  # the dask extra is missing: the message names it
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = sum(row["status"] != "ok" for row in rows)
    print(f"scored {len(rows) - failed} of {len(rows)} inputs with {model_path.name} "
          f"({metadata.get('feature_set')}/{metadata.get('head')}, threshold "
          f"{model.steps[-1][1].threshold_:.3f}{_site_adjustments(metadata)}); {failed} errors; "
          f"wrote {args.out}", file=sys.stderr)
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


def _score_all_dask(model_path, paths, args):
    from .dask_scoring import score_on_dask

    rows, todo = _pending(paths, args)
    scored = score_on_dask(model_path, [paths[i] for i in todo], scheduler=args.dask,
                           batch_size=args.batch_size)
    for i, row in zip(todo, scored):
        rows[i] = row
    atomic_write_bytes(args.out, _csv_bytes(rows))
    return rows


def _pending(paths, args):
    """Rows kept from ``--out`` under ``--resume`` (None elsewhere), and the indices to score."""
    done = _read_done(args.out) if args.resume else {}
    rows = [done.get(path) for path in paths]
    return rows, [i for i, row in enumerate(rows) if row is None]


def _score_all(model, paths, args):
    rows, todo = _pending(paths, args)
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", desc="scoring",
               disable=args.quiet, file=sys.stderr)
    last_write = time.monotonic()
    for start in range(0, len(todo), args.batch_size):
        batch = todo[start:start + args.batch_size]
        for i, row in zip(batch, score_paths(model, [paths[i] for i in batch])):
            rows[i] = row
        bar.update(len(batch))
        if time.monotonic() - last_write >= args.checkpoint_seconds:
            atomic_write_bytes(args.out, _csv_bytes([r for r in rows if r is not None]))
            last_write = time.monotonic()
    bar.close()
    atomic_write_bytes(args.out, _csv_bytes(rows))
    return rows


if __name__ == "__main__":
    sys.exit(main())
