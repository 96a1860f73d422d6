"""End-to-end scoring throughput of saved models, in one run, with ratios.

    python benchmarks/default_throughput.py --n 2000 --rounds 3 \\
        --model runs/int8_cv/models/cnn-logreg.joblib \\
        --model xray_features/models/default_pipeline.joblib \\
        --model xray_features/models/default_pipeline_fp32.joblib \\
        --model runs/int8_cv/models/hog_cnn_int8-logreg.joblib \\
        --model runs/int8_cv/models/hog_cnn-logreg.joblib \\
        --model runs/int8_cv/models/cnn_int8-logreg.joblib --stream 100000

(the ``runs/int8_cv`` models from ``python -m pipelines.run --features
cnn,cnn_int8,hog+cnn,hog+cnn_int8 --heads logreg --out runs/int8_cv``; the
first, the fp32 pure-CNN pipeline, is the reference of the ratios).

Each model scores the same training JPEGs (every other file of train/, at most
``--n``) through the command a user
runs, ``python -m pipelines.score LIST --model M --out CSV`` (process start,
model load, decode, preprocessing, features, head, CSV), ``--rounds`` times,
the models interleaved so that each round sees the same machine load; the best
round of each is kept. ``--model-at REV`` adds the packaged default as it was
at git revision REV (e.g. the previous default), copied out to a temporary
folder with its sidecar. The first model is the reference of the ratios.
``--stream N`` then streams N inputs (the same JPEGs, cycled) through the
packaged default in a child process and reports its peak RSS
(``benchmarks/throughput.py``'s streaming check). Prints a table and writes
JSON (``--out``); the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = "xray_features/models/default_pipeline.joblib"


def model_at(revision, folder):
    """The packaged default (and its sidecar) as it was at ``revision``."""
    path = Path(folder) / f"default_at_{revision.replace('~', '_').replace('/', '_')}.joblib"
    for suffix in ("", ".sha256"):
        data = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{DEFAULT}{suffix}"],
                              check=True, capture_output=True).stdout
        if suffix:  # the sidecar names the file: rename it
            data = data.split()[0] + f"  {path.name}\n".encode()
        Path(str(path) + suffix).write_bytes(data)
    return path


def score_once(model, listing, out):
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.score", str(listing), "--model", str(model),
                    "--out", str(out), "--quiet"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "kermany"))
    parser.add_argument("--n", type=int, default=1000,
                        help="training JPEGs scored (every other file of train/, at most N)")
    parser.add_argument("--model", action="append", default=[], help="a saved model (repeat)")
    parser.add_argument("--model-at", action="append", default=[], metavar="REV",
                        help="the packaged default at git revision REV (repeat)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream", type=int, default=0, metavar="N",
                        help="also stream N inputs through the packaged default and report "
                        "its peak RSS (0: skip)")
    parser.add_argument("--out", default=None, help="JSON output")
    args = parser.parse_args(argv)
    images = sorted(str(p) for p in (Path(args.data) / "train").rglob("*.jpeg"))[::2][:args.n]
    with tempfile.TemporaryDirectory() as tmp:
        models = [Path(m) for m in args.model] + [model_at(r, tmp) for r in args.model_at]
        if not models:
            parser.error("name at least one --model or --model-at")
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("\n".join(images) + "\n")
        best = {str(m): float("inf") for m in models}
        load = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for model in models:
                seconds = score_once(model, listing, Path(tmp) / "scores.csv")
                best[str(model)] = min(best[str(model)], seconds)
            load.append(os.getloadavg()[0])
    names = {str(m): (m.name if m.parent.name != Path(tmp).name else m.stem) for m in models}
    reference = best[str(models[0])]
    rows = [{"model": names[m], "path": m, "seconds": s, "images_per_s": len(images) / s,
             "ratio_to_first": reference / s} for m, s in best.items()]
    print(f"{len(images)} training JPEGs, end to end through pipelines.score, best of "
          f"{args.rounds}; load average {min(load):.2f}-{max(load):.2f}")
    print(f"{'model':40s} {'seconds':>8} {'images/s':>9} {'x first':>8}")
    for row in rows:
        print(f"{row['model']:40s} {row['seconds']:8.1f} {row['images_per_s']:9.1f} "
              f"{row['ratio_to_first']:8.2f}")
    streamed = None
    if args.stream:
        from throughput import stream  # benchmarks/throughput.py, beside this script

        streamed = stream(REPO / DEFAULT, images, args.stream, timeout=6 * 3600)
        print(f"streaming {args.stream} inputs through {DEFAULT}: peak RSS "
              f"{streamed.get('peak_rss_mib')} MiB, {streamed.get('rows_kept')} rows kept, "
              f"{streamed.get('errors')} errors, {streamed.get('images_per_s')} images/s"
              + (f"; error: {streamed['error']}" if "error" in streamed else ""))
    if args.out:
        Path(args.out).write_text(json.dumps({"n": len(images), "rounds": args.rounds,
                                              "load_average": load, "models": rows,
                                              "stream": streamed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
