"""Throughput, scaling and memory benchmark of the scoring pipelines (issue 6).

One command::

    python benchmarks/throughput.py                  # writes benchmarks/results.json
    python benchmarks/throughput.py --quick          # smoke run, about a minute
    python benchmarks/throughput.py --with-comparison --stream-n 100000

It measures, in one process and one run (so every ratio compares figures
taken under the same machine load):

- images/s of each stage: decode, CLAHE, LungCrop, Resize, HOG, LBP, CNN
  embedding, and the logreg / xgb heads (fitted on random features of the
  hog+cnn width);
- end-to-end scoring images/s through `pipelines.score.score_paths` in
  batches of 64 for the ``hog``, ``cnn`` and ``hog+cnn`` pipelines
  (`pipelines.assemble.make_pipeline`, head fitted on a few hundred real
  images), on the 224-px JPEGs, on kermany-native-subset at its real shapes,
  and on ~1,500-px copies made by upscaling (written to a temporary folder,
  deleted at the end); every figure carries its ratio to pure-CNN scoring on
  the same images. The 1,500-px set is also scored with reduced JPEG
  decoding (``ReadImages(max_side=512)``), with the change in probability;
- scaling from n_jobs=1 to 2, and from 1 to 2 Dask workers (if installed);
- peak RSS of a separate process scoring ``--stream-n`` inputs (a folder
  cycled) in batches of 64, keeping every result row as the score CLI does;
- optionally (``--with-comparison``, or ``--only-comparison`` alone) the wall
  time of the 5-fold hog+cnn comparison, ``python -m pipelines.run``: without
  copies (the 5,216 images the speed target names) cold (empty cache) and warm (features cached,
  heads refitted); with the default copies cold, warm, rerun (fits cached too),
  and warm with counter-squash copies only.

The machine load (``os.getloadavg()``) and the CPU share the process got are
recorded next to every section: on a shared machine they explain the figures.
"""

from __future__ import annotations

import argparse
import gc
import glob
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

TARGETS = {
    "hog_cnn_vs_cnn": 0.8,          # hog+cnn throughput >= 0.8x pure CNN
    "e2e_224_images_per_s": 150.0,  # end-to-end from 224-px JPEG
    "peak_rss_gib_100k": 1.0,       # peak RSS streaming 100,000 inputs
    "comparison_cold_s": 180.0,
    "comparison_warm_s": 30.0,
}
PIPELINES = ("cnn", "hog", "hog+cnn", "hog+cnn160")
BATCH = 64


# ---- helpers -------------------------------------------------------------------

def load():
    return [round(x, 2) for x in os.getloadavg()]


class Timer:
    """Wall and process-CPU time of a block; ``cpu_share`` = CPU / wall."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def rate(n, timer):
    return {"images_per_s": round(n / timer.wall, 2), "ms_per_image": round(1000 * timer.wall / n, 3),
            "cpu_share": round(timer.cpu / timer.wall, 2)}


def list_images(root):
    root = Path(root)
    if (root / "train").is_dir():
        root = root / "train"
    exts = ("*.jpeg", "*.jpg", "*.png")
    return sorted(p for e in exts for p in glob.glob(str(root / "**" / e), recursive=True))


def label_of(path):
    return int("PNEUMONIA" in Path(path).parts[-2].upper())


def sample(paths, n, seed):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(paths))[:n]
    return [paths[i] for i in sorted(idx)]


def default_data():
    env = os.environ.get("XRAY_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "kermany"


def synthetic_set(folder, n, size, aspect=1.0):
    """Phantom JPEGs (the tests' phantoms) when the real data is absent."""
    import cv2

    import importlib.util

    spec = importlib.util.spec_from_file_location("phantoms", REPO / "tests" / "conftest.py")
    phantoms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(phantoms)
    phantom, pneumonia_phantom = phantoms.phantom, phantoms.pneumonia_phantom

    paths = []
    for i in range(n):
        make, label = (pneumonia_phantom, "PNEUMONIA") if i % 2 else (phantom, "NORMAL")
        image = make(size, seed=i)
        if aspect != 1.0:
            image = cv2.resize(image, (size, round(size / aspect)))
        path = Path(folder) / label / f"synthetic_{i}.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), (image * 255).round().astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


def upscale_set(paths, folder, side):
    """Copies of ``paths`` with their longest side set to ``side`` (cubic), JPEG q90."""
    import cv2

    out = []
    for i, path in enumerate(paths):
        image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        height, width = image.shape
        scale = side / max(height, width)
        big = cv2.resize(image, (round(width * scale), round(height * scale)),
                         interpolation=cv2.INTER_CUBIC)
        target = Path(folder) / Path(path).parts[-2] / f"{i:05d}_{Path(path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(str(target))
    return out


# ---- models ----------------------------------------------------------------------

def build_models(fit_paths, n_jobs=-1):
    """{feature set: fitted make_pipeline(fs, 'logreg')}: features of ``fit_paths``
    extracted once, the head fitted on them (3-fold OOF threshold)."""
    from pipelines.assemble import extract_features, make_pipeline

    labels = np.array([label_of(p) for p in fit_paths])
    features = extract_features(fit_paths, ["hog", "cnn", "cnn160"], progress=False)
    models = {}
    for fs in PIPELINES:
        model = make_pipeline(fs, "logreg", cv=3, n_jobs=n_jobs)
        X = np.hstack([features[name] for name in fs.split("+")])
        model.steps[-1][1].fit(X, labels)
        model[:-1].fit(fit_paths[:2])  # stateless steps: validation only
        models[fs] = model
    return models


def with_max_side(model, max_side):
    from sklearn.pipeline import Pipeline
    from xray_features.io import ReadImages

    reader = model.steps[0][1]
    return Pipeline([("read", ReadImages(reader.max_pixels, reader.min_side, max_side))]
                    + model.steps[1:])


def score_all(model, paths):
    """Scoring as the score CLI does it: `score_paths` in batches of 64.

    A reader with ``max_side`` set goes through ``model.predict_proba`` on
    the paths when `score_paths` does not pass ``max_side`` on."""
    from pipelines.score import score_paths

    reader = model.steps[0][1]
    if getattr(reader, "max_side", None) is not None and not _score_paths_knows_max_side():
        out = []
        for start in range(0, len(paths), BATCH):
            out.extend(model.predict_proba(paths[start:start + BATCH])[:, 1])
        return out
    rows = []
    for start in range(0, len(paths), BATCH):
        rows += score_paths(model, paths[start:start + BATCH])
    return rows


def probabilities(scored):
    return np.array([float(r["probability"]) if isinstance(r, dict) else float(r)
                     for r in scored])


def _score_paths_knows_max_side():
    import inspect

    from pipelines.score import score_paths
    return "max_side" in inspect.getsource(score_paths)


def time_scoring(models, paths, rounds):
    """Best-of-``rounds`` images/s per pipeline, the pipelines interleaved."""
    best = {}
    for _ in range(rounds):
        for name, model in models.items():
            gc.collect()
            with Timer() as t:
                score_all(model, paths)
            r = rate(len(paths), t)
            if name not in best or r["images_per_s"] > best[name]["images_per_s"]:
                best[name] = r
    return best


# ---- sections ----------------------------------------------------------------------

def stage_rates(paths, with_features, rounds=1):
    from xray_features.cnn import OnnxEmbedder
    from xray_features.io import read_xray
    from xray_features.preprocess import CLAHE, LungCrop, Resize
    from xray_features.texture import HOGFeatures, LBPFeatures

    n = len(paths)
    out = {}

    def run(name, fn):
        best = None
        for _ in range(rounds):
            with Timer() as t:
                result = fn()
            r = rate(n, t)
            if best is None or r["images_per_s"] > best["images_per_s"]:
                best = r
        out[name] = best
        return result

    images = run("decode", lambda: [read_xray(p) for p in paths])
    shapes = np.array([im.shape for im in images])
    out["median_shape"] = [int(v) for v in np.median(shapes, axis=0)]
    equalised = run("clahe", lambda: CLAHE().transform(images))
    cropped = run("lung_crop", lambda: LungCrop().transform(equalised))
    resized = run("resize", lambda: Resize().transform(cropped))
    if with_features:
        run("hog", lambda: HOGFeatures().transform(resized))
        run("lbp", lambda: LBPFeatures().transform(resized))
        embedder = OnnxEmbedder()
        embedder.transform(resized[:2])  # open the session outside the timing
        run("cnn_embedding", lambda: embedder.transform(resized))
    return out


def head_rates(n, width, fit_rows=400):
    from pipelines.assemble import make_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(fit_rows, width)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=fit_rows) > 0).astype(int)
    Xs = rng.normal(size=(n, width)).astype(np.float32)
    out = {}
    for name in ("logreg", "xgb"):
        head = make_head(name)
        if name == "xgb":
            head.set_params(n_estimators=300)
        head.fit(X, y)
        head.predict_proba(Xs[:8])
        with Timer() as t:
            for start in range(0, n, BATCH):
                head.predict_proba(Xs[start:start + BATCH])
        out[f"head_{name}"] = rate(n, t)
    out["head_width"] = width
    return out


def end_to_end(models, sets, rounds, max_side):
    out = {}
    for name, paths in sets.items():
        section = {"n": len(paths), "load_before": load()}
        rates = time_scoring(models, paths, rounds)
        cnn = rates["cnn"]["images_per_s"]
        for fs, r in rates.items():
            r["ratio_to_cnn"] = round(r["images_per_s"] / cnn, 3)
        section["pipelines"] = rates
        if name == "upscaled_1500":
            reduced = {fs: with_max_side(models[fs], max_side) for fs in ("cnn", "hog+cnn")}
            r2 = time_scoring(reduced, paths, rounds)
            for fs, r in r2.items():
                r["ratio_to_cnn"] = round(r["images_per_s"] / cnn, 3)
                r["speedup_vs_full_decode"] = round(
                    r["images_per_s"] / rates[fs]["images_per_s"], 3)
            section[f"max_side_{max_side}"] = r2
            full = probabilities(score_all(models["hog+cnn"], paths))
            fast = probabilities(score_all(reduced["hog+cnn"], paths))
            section[f"max_side_{max_side}"]["hog+cnn_probability_change"] = {
                "mean_abs": round(float(np.mean(np.abs(full - fast))), 5),
                "max_abs": round(float(np.max(np.abs(full - fast))), 5)}
        section["load_after"] = load()
        out[name] = section
    return out


def scaling(fit_paths, paths, rounds):
    from xray_features.texture import HOGFeatures
    from xray_features.io import ReadImages
    from xray_features.preprocess import default_preprocessor

    out = {"load_before": load()}
    resized = default_preprocessor().transform(ReadImages().transform(paths))
    for n_jobs in (1, 2):
        with Timer() as t:
            HOGFeatures(n_jobs=n_jobs).transform(resized)
        out[f"hog_stage_n_jobs_{n_jobs}"] = rate(len(paths), t)
        models = build_models(fit_paths, n_jobs=n_jobs)
        for fs, r in time_scoring({fs: models[fs] for fs in ("hog", "hog+cnn")}, paths,
                                  rounds).items():
            out[f"{fs}_n_jobs_{n_jobs}"] = r
    for key in ("hog_stage", "hog", "hog+cnn"):
        out[f"{key}_speedup_1_to_2"] = round(
            out[f"{key}_n_jobs_2"]["images_per_s"] / out[f"{key}_n_jobs_1"]["images_per_s"], 3)
    out["load_after"] = load()
    return out


def dask_scaling(model_path, paths):
    try:
        import distributed
    except ImportError:
        return {"skipped": "distributed is not installed (pip install 'xray-hybrid[dask]')"}
    from pipelines.dask_scoring import score_on_dask
    from pipelines.score import score_paths
    from pipelines.persist import load_model

    out = {"load_before": load()}
    model, _ = load_model(model_path)
    local = []
    for start in range(0, len(paths), BATCH):
        local += score_paths(model, paths[start:start + BATCH])
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            score_on_dask(model_path, paths[:BATCH * workers], scheduler=client)  # warm-up
            with Timer() as t:
                rows = score_on_dask(model_path, paths, scheduler=client)
        out[f"workers_{workers}"] = {**rate(len(paths), t), "identical_to_local": rows == local}
    out["speedup_1_to_2"] = round(out["workers_2"]["images_per_s"]
                                  / out["workers_1"]["images_per_s"], 3)
    out["load_after"] = load()
    return out


def stream(model_path, folder_paths, n, timeout):
    """Run the streaming child; return its report (peak RSS from the kernel)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lst", delete=False) as handle:
        handle.write("\n".join(folder_paths))
        listing = handle.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_stream-child", str(model_path),
           listing, str(n)]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"n": n, "error": f"timed out after {timeout} s"}
    finally:
        os.unlink(listing)
    if done.returncode != 0:
        return {"n": n, "error": done.stderr[-2000:]}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["wall_s_with_startup"] = round(time.perf_counter() - started, 1)
    return report


def _vm_rss_mib(field="VmRSS"):
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``), MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stream_child(model_path, listing, n):
    """Child process: score ``n`` inputs cycling ``listing`` in batches of 64."""
    from pipelines.persist import load_model
    from pipelines.score import score_paths

    paths = Path(listing).read_text().splitlines()
    model, _ = load_model(model_path)
    baseline = _vm_rss_mib()
    source = itertools.cycle(paths)
    rows, trace, done = [], [], 0
    every = max(BATCH, (n // 40) // BATCH * BATCH)
    started = time.perf_counter()
    while done < n:
        batch = list(itertools.islice(source, min(BATCH, n - done)))
        rows += score_paths(model, batch)  # the score CLI keeps every row too
        done += len(batch)
        if done % every < BATCH or done == n:
            trace.append([done, round(_vm_rss_mib(), 1)])
    wall = time.perf_counter() - started
    # VmHWM is the peak of this process's own memory since exec. getrusage's
    # ru_maxrss is not used as the figure: Linux carries into it the RSS the
    # forked copy of the (large) parent had before exec.
    peak = _vm_rss_mib("VmHWM")
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "n": n, "batch_size": BATCH, "rows_kept": len(rows), "errors": sum(r["status"] != "ok" for r in rows),
        "peak_rss_mib": round(peak, 1), "ru_maxrss_mib_incl_fork": round(ru_maxrss, 1),
        "rss_after_model_load_mib": round(baseline, 1),
        "rss_trace_mib": trace, "wall_s": round(wall, 1), "images_per_s": round(n / wall, 2),
        "load_end": load()}))


# The comparison runs, in order: (name, --augment value or None for the default,
# cache folder, whether the fitted heads are kept from the run before).
COMPARISON_RUNS = (
    ("cold_no_augment", "none", "plain", False),
    ("warm_no_augment", "none", "plain", False),
    ("cold", None, "default", False),
    ("warm", None, "default", False),
    ("rerun", None, "default", True),
    ("warm_counter_squash", "counter-squash", "default", False),
)


def comparison(data_root, tmp, quick):
    """Wall time of the 5-fold hog+cnn comparison, both heads. First the speed
    target's workload, the 5,216 training images without copies, cold (empty cache) and warm
    (features cached, every head refitted); then the default, with its
    counter-squash and zoom copies: cold, warm, a rerun (features and fitted
    models cached), and warm with counter-squash copies only."""
    print("comparison: " + ", ".join(name for name, *_ in COMPARISON_RUNS) + " ...", flush=True)
    out = {"load_before": load()}
    for kind, augment, cache_name, keep_fits in COMPARISON_RUNS:
        cache = Path(tmp) / f"comparison-cache-{cache_name}"
        cmd = [sys.executable, "-m", "pipelines.run", "--data", str(data_root), "--features",
               "hog+cnn", "--out", str(Path(tmp) / f"comparison-{kind}"), "--cache-dir",
               str(cache), "--quiet"]
        if augment:
            cmd += ["--augment", augment]
        if quick:
            cmd += ["--limit", "120", "--n-boot", "50", "--cv", "3"]
        if not keep_fits:
            shutil.rmtree(cache / "fits", ignore_errors=True)  # the heads are refitted
        with Timer() as t:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        out[kind] = {"wall_s": round(t.wall, 1), "returncode": done.returncode,
                     "load_after": load(), "command": " ".join(cmd[1:])}
        if done.returncode != 0:
            out[kind]["stderr"] = done.stderr[-2000:]
    return out


# ---- report --------------------------------------------------------------------------

def verdict(value, target, higher_is_better=True):
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def targets(results):
    rows = []
    if "end_to_end" in results:
        rows += scoring_targets(results)
    c = results.get("comparison")
    for kind, *_ in COMPARISON_RUNS:
        key = "comparison_cold_s" if kind.startswith("cold") else "comparison_warm_s"
        if c and c.get(kind, {}).get("returncode") == 0:
            wall = c[kind]["wall_s"]
            rows.append((f"5-fold hog+cnn comparison {kind} <= {TARGETS[key]:.0f} s",
                         f"{wall:.0f} s", verdict(wall, TARGETS[key], higher_is_better=False)))
        else:
            rows.append((f"5-fold hog+cnn comparison {kind}", "-",
                         "not measured (--with-comparison)" if not c else "failed"))
    return rows


def scoring_targets(results):
    e2e = results["end_to_end"]["kermany_224"]["pipelines"]
    rows = []
    ratio = e2e["hog+cnn"]["ratio_to_cnn"]
    rows.append(("hog+cnn >= 0.8x pure-CNN (224 px)", f"{ratio:.2f}x",
                 verdict(ratio, TARGETS["hog_cnn_vs_cnn"])))
    for name in ("native_512", "upscaled_1500"):
        if name in results["end_to_end"]:
            r = results["end_to_end"][name]["pipelines"]["hog+cnn"]["ratio_to_cnn"]
            rows.append((f"hog+cnn >= 0.8x pure-CNN ({name})", f"{r:.2f}x",
                         verdict(r, TARGETS["hog_cnn_vs_cnn"])))
    for fs in ("hog+cnn", "hog+cnn160", "cnn", "hog"):
        ips = e2e[fs]["images_per_s"]
        rows.append((f"end-to-end >= 150 img/s, 224-px JPEG, {fs}", f"{ips:.1f} img/s",
                     verdict(ips, TARGETS["e2e_224_images_per_s"])))
    s = results.get("stream", {})
    if "peak_rss_mib" in s:
        gib = s["peak_rss_mib"] / 1024
        note = verdict(gib, TARGETS["peak_rss_gib_100k"], higher_is_better=False)
        if s["n"] < 100_000:
            note += f" at n={s['n']:,} (100k not run)"
        rows.append(("peak RSS <= 1 GiB streaming 100k", f"{s['peak_rss_mib']:.0f} MiB", note))
    else:
        rows.append(("peak RSS <= 1 GiB streaming 100k", "-", s.get("error", "not measured")[:60]))
    return rows


def print_report(results):
    print(f"\nmachine: {results['machine']['cpus']} CPUs; load avg at start "
          f"{results['load']['start']}, at end {results['load']['end']}")
    if "stages" in results:
        print_scoring(results)
    print("\ntargets")
    width = max(len(r[0]) for r in results["targets"])
    for name, value, status in results["targets"]:
        print(f"  {name:<{width}}  {value:>14}  {status}")


def print_scoring(results):
    print("\nper stage (images/s; cpu_share = process CPU / wall)")
    for name, stages in results["stages"].items():
        cells = [f"{k}={v['images_per_s']:.0f}" for k, v in stages.items()
                 if isinstance(v, dict)]
        print(f"  {name:<14} shape~{stages.get('median_shape', '')}: " + ", ".join(cells))
    print("\nend-to-end scoring (score_paths, batches of 64): images/s (ratio to pure CNN)")
    for name, section in results["end_to_end"].items():
        cells = [f"{fs}={r['images_per_s']:.1f} ({r['ratio_to_cnn']:.2f}x)"
                 for fs, r in section["pipelines"].items()]
        print(f"  {name:<14} n={section['n']}: " + ", ".join(cells) + f"  load {section['load_before']}")
        for key, value in section.items():
            if key.startswith("max_side_"):
                cells = [f"{fs}={r['images_per_s']:.1f} ({r['ratio_to_cnn']:.2f}x, "
                         f"{r['speedup_vs_full_decode']:.2f}x full decode)"
                         for fs, r in value.items() if "images_per_s" in r]
                print(f"  {'  ' + key:<14}: " + ", ".join(cells)
                      + f"; |dp| {value['hog+cnn_probability_change']}")
    sc = results.get("scaling")
    if sc:
        print("\nn_jobs 1 -> 2: " + ", ".join(
            f"{k}: {sc[f'{k}_n_jobs_1']['images_per_s']:.1f} -> {sc[f'{k}_n_jobs_2']['images_per_s']:.1f}"
            f" ({sc[f'{k}_speedup_1_to_2']:.2f}x)" for k in ("hog_stage", "hog", "hog+cnn")))
    dk = results.get("dask")
    if dk and "workers_1" in dk:
        print(f"Dask LocalCluster hog+cnn 1 -> 2 workers: {dk['workers_1']['images_per_s']:.1f} -> "
              f"{dk['workers_2']['images_per_s']:.1f} img/s ({dk['speedup_1_to_2']:.2f}x), "
              f"identical to local: {dk['workers_2']['identical_to_local']}")


# ---- main ----------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None,
                        help="224-px Kermany root (default $XRAY_DATA, else ../shared/data/kermany)")
    parser.add_argument("--native", default=None,
                        help="aspect-preserving subset (default: kermany-native-subset beside --data)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results.json"))
    parser.add_argument("--n", type=int, default=256, help="images per throughput measurement")
    parser.add_argument("--n-upscaled", type=int, default=96, help="~1,500-px images made")
    parser.add_argument("--upscale-side", type=int, default=1500)
    parser.add_argument("--max-side", type=int, default=512,
                        help="max_side of the reduced-decoding variant")
    parser.add_argument("--n-fit", type=int, default=240, help="images the heads are fitted on")
    parser.add_argument("--rounds", type=int, default=2, help="repeats; the best is kept")
    parser.add_argument("--stream-n", type=int, default=100_000)
    parser.add_argument("--stream-timeout", type=int, default=6 * 3600)
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--with-comparison", action="store_true",
                        help="also time python -m pipelines.run --features hog+cnn cold and warm")
    parser.add_argument("--only-comparison", action="store_true",
                        help="time only the comparison (implies --with-comparison)")
    parser.add_argument("--quick", action="store_true", help="small n: a smoke run")
    parser.add_argument("--_stream-child", nargs=3, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._stream_child:
        model_path, listing, n = args._stream_child
        stream_child(model_path, listing, int(n))
        return 0
    if args.quick:
        args.n, args.n_upscaled, args.n_fit, args.rounds = 24, 6, 24, 1
        args.stream_n = min(args.stream_n, 256)

    from pipelines.assemble import extract_features  # noqa: F401  (import cost outside timings)
    from pipelines.persist import package_versions, save_model
    from xray_features.texture import hog_length

    results = {"command": "python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "versions": package_versions()},
               "load": {"start": load()}, "quick": args.quick}
    print(f"load average at start: {results['load']['start']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="xray-bench-") as tmp:
        data = Path(args.data) if args.data else default_data()
        native = Path(args.native) if args.native else data.parent / "kermany-native-subset"
        all224 = list_images(data) if data.is_dir() else []
        if not all224:
            print(f"{data} not found: using synthetic phantoms", flush=True)
            all224 = synthetic_set(Path(tmp) / "syn224", max(args.n + args.n_fit, 64), 224)
        allnat = list_images(native) if native.is_dir() else []
        if not allnat:
            allnat = synthetic_set(Path(tmp) / "synnat", args.n, 512, aspect=1.25)
        results["data"] = {"kermany_224": str(data), "native_512": str(native),
                           "synthetic": not data.is_dir()}
        if args.only_comparison:
            results["comparison"] = comparison(data, tmp, args.quick)
            return finish(results, args.out)
        fit_paths = sample(all224, args.n_fit, seed=1)
        rest = sorted(set(all224) - set(fit_paths))
        paths224 = sample(rest, args.n, seed=2)
        pathsnat = sample(allnat, args.n, seed=3)
        pathsup = upscale_set(sample(allnat, args.n_upscaled, seed=4), Path(tmp) / "up",
                              args.upscale_side)
        sets = {"kermany_224": paths224, "native_512": pathsnat, "upscaled_1500": pathsup}

        print("stages ...", flush=True)
        results["stages"] = {
            "kermany_224": {**stage_rates(paths224, True, args.rounds), "load": load()},
            "native_512": {**stage_rates(pathsnat, False, args.rounds), "load": load()},
            "upscaled_1500": {**stage_rates(pathsup, False, args.rounds), "load": load()},
        }
        results["stages"]["heads"] = head_rates(args.n, hog_length(128, 9, 16, 2) + 1280)

        print("fitting heads ...", flush=True)
        models = build_models(fit_paths)
        print("end-to-end ...", flush=True)
        results["end_to_end"] = end_to_end(models, sets, args.rounds, args.max_side)
        print("scaling ...", flush=True)
        results["scaling"] = scaling(fit_paths, paths224, args.rounds)

        model_path = Path(tmp) / "hog_cnn-logreg.joblib"
        save_model(models["hog+cnn"], model_path,
                   {"feature_set": "hog+cnn", "head": "logreg",
                    "threshold": float(models["hog+cnn"].steps[-1][1].threshold_)})
        if not args.skip_dask:
            print("dask ...", flush=True)
            results["dask"] = dask_scaling(model_path, paths224)
        if not args.skip_stream:
            print(f"streaming {args.stream_n:,} inputs in a child process ...", flush=True)
            results["stream"] = stream(model_path, rest, args.stream_n, args.stream_timeout)
        if args.with_comparison:
            results["comparison"] = comparison(data, tmp, args.quick)
    return finish(results, args.out)


def finish(results, out):
    results["load"]["end"] = load()
    results["targets"] = targets(results)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
