"""Time the HOG implementations on real train/ films, all in one run, and say how far each is from scikit-image.

    python benchmarks/hog_impl.py --data ../shared/data/kermany --n 400

``--n`` train/ JPEGs (a fixed random sample) are read and preprocessed once
(``pipelines.assemble.extract_preprocessed``: the shared 224-px float32
image). Then, interleaved round by round (best round kept, since the CPUs
are shared):

* on the 128-px images that HOGFeatures describes (orientations 9, cells
  16 px, blocks 2 x 2, L2-Hys): scikit-image's ``hog`` per image; main's
  ``hog_l2hys`` per image (a reference copy of it is kept below); this
  branch's ``hog_l2hys`` per image and ``hog_l2hys_batch`` on the whole batch;
  OpenCV's ``HOGDescriptor`` with the same window, cells, blocks, bins and
  L2-Hys (uint8 input, as it requires; conversion included), with its
  default Gaussian block window and with that window made flat;
* the whole extractor from 224 px (validation, resize to 128, HOG): with
  scikit-image's ``hog``, with main's ``hog_l2hys``, and ``HOGFeatures``.

Each row has its ms per image, images/s, speed relative to scikit-image's
row of the same table, and max |difference| to scikit-image over all images
(OpenCV's features reordered to scikit-image's layout first, and their
Pearson correlation with scikit-image's).

A second table (skip with ``--no-threads``) times ``HOGFeatures(n_jobs=1)``
against ``n_jobs=-1`` on batches of 8 and 64 images, each batch followed by
the packaged embedder's onnxruntime run with 2 intra-op threads in the same
process, as in ``hog+cnn`` scoring, with onnxruntime's spin-waiting on
(its default) and off.

OpenCV 5 moved ``HOGDescriptor`` out of the main module into the contrib
module xobjdetect: with plain ``opencv-python-headless`` 5 its rows read
"n/a". To time it, put ``opencv-contrib-python-headless`` of the same version
first on the path, e.g. ``pip install --no-deps --target /tmp/cvcontrib
opencv-contrib-python-headless==5.0.0.93`` and ``PYTHONPATH=/tmp/cvcontrib``.
"""

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import skimage
from numpy.lib.stride_tricks import sliding_window_view
from skimage.feature import hog

from pipelines.assemble import extract_preprocessed
from xray_features import index_dataset
from xray_features._images import as_images, resize_to, to_uint8
from xray_features.texture import HOGFeatures, hog_l2hys, hog_l2hys_batch

SIZE, ORIENTATIONS, CELL, BLOCK = 128, 9, 16, 2
EMBEDDER = Path(__file__).resolve().parents[1] / "xray_features/models/efficientnet_lite0_embedder.onnx"


# --- main's hog_l2hys (commit b2fd09f), kept verbatim as the baseline ------------------------

def main_hog_l2hys(image, orientations, pixels_per_cell, cells_per_block, eps=1e-5):
    image = np.asarray(image)
    cell, block = int(pixels_per_cell), int(cells_per_block)
    n_rows, n_cols = image.shape[0] // cell, image.shape[1] // cell
    if image.ndim != 2 or n_rows - block + 1 <= 0 or n_cols - block + 1 <= 0:
        return hog(image, orientations=orientations, pixels_per_cell=(cell, cell),
                   cells_per_block=(block, block), block_norm="L2-Hys", feature_vector=True)
    float_dtype = np.float32 if image.dtype in (np.float16, np.float32) else np.float64
    image = image.astype(float_dtype, copy=False)
    g_row = np.zeros(image.shape, float_dtype)
    g_col = np.zeros(image.shape, float_dtype)
    g_row[1:-1, :] = image[2:, :] - image[:-2, :]
    g_col[:, 1:-1] = image[:, 2:] - image[:, :-2]
    height, width = n_rows * cell, n_cols * cell
    g_row = g_row[:height, :width].astype(np.float64)
    g_col = g_col[:height, :width].astype(np.float64)
    magnitude = np.sqrt(g_col * g_col + g_row * g_row).ravel()
    orientation = np.rad2deg(np.arctan2(g_row, g_col)).ravel()
    orientation[orientation >= 180.0] -= 180.0
    orientation[orientation < 0] += 180.0
    edges, cell_of = _main_hog_layout(height, width, cell, orientations)
    bins = np.minimum((orientation * (orientations / 180.0)).astype(np.intp), orientations)
    bins -= orientation < edges[bins]
    bins += orientation >= edges[bins + 1]
    keep = bins < orientations
    index = cell_of[keep] * orientations + bins[keep]
    sums = np.bincount(index, weights=magnitude[keep], minlength=n_rows * n_cols * orientations)
    histogram = (sums.astype(np.float32) / np.float32(cell * cell)).astype(np.float64)
    histogram = histogram.reshape(n_rows, n_cols, orientations)
    blocks = sliding_window_view(histogram, (block, block), axis=(0, 1))
    blocks = blocks.transpose(0, 1, 3, 4, 2)
    axes = (2, 3, 4)
    out = blocks / np.sqrt(np.sum(blocks ** 2, axis=axes, keepdims=True) + eps ** 2)
    out = np.minimum(out, 0.2)
    out = out / np.sqrt(np.sum(out ** 2, axis=axes, keepdims=True) + eps ** 2)
    return out.astype(float_dtype).ravel()


@lru_cache(maxsize=32)
def _main_hog_layout(height, width, cell, orientations):
    step = np.float32(180.0 / orientations)
    edges = (step * np.arange(orientations + 1, dtype=np.float32)).astype(np.float64)
    edges = np.concatenate([edges, [np.inf]])
    cell_of = (np.arange(height)[:, None] // cell * (width // cell)
               + np.arange(width)[None, :] // cell).ravel()
    return edges, cell_of


# --- the implementations, each images -> (n, 1764) -----------------------------------------

def skimage_hog(image):
    return hog(image, orientations=ORIENTATIONS, pixels_per_cell=(CELL, CELL),
               cells_per_block=(BLOCK, BLOCK), block_norm="L2-Hys", feature_vector=True)


def cv2_descriptor(win_sigma):
    """OpenCV's HOG with scikit-image's window, cells, blocks and bins, L2-Hys at 0.2,
    unsigned gradients, no gamma; None where this OpenCV build has no HOGDescriptor."""
    if not hasattr(cv2, "HOGDescriptor"):
        return None
    return cv2.HOGDescriptor((SIZE, SIZE), (CELL * BLOCK, CELL * BLOCK), (CELL, CELL), (CELL, CELL),
                             ORIENTATIONS, 1, win_sigma, cv2.HOGDESCRIPTOR_L2HYS, 0.2, False,
                             64, False)


def cv2_rows(descriptor, images):
    """OpenCV's descriptors in scikit-image's layout: OpenCV orders blocks and the
    cells in a block column by column; scikit-image row by row."""
    rows = np.stack([descriptor.compute(to_uint8(image)).ravel() for image in images])
    blocks = SIZE // CELL - BLOCK + 1
    rows = rows.reshape(len(images), blocks, blocks, BLOCK, BLOCK, ORIENTATIONS)
    return rows.transpose(0, 2, 1, 4, 3, 5).reshape(len(images), -1)


def extractor_path(describe):
    """What HOGFeatures.transform did on main: validate, then resize and describe each image."""
    def run(films):
        return np.vstack([describe(resize_to(image, SIZE, SIZE)).astype(np.float32)
                          for image in as_images(films)])
    return run


def timed_table(rows, rounds):
    """rows: {name: (function, argument)} -> ({name: best seconds}, {name: output})."""
    best, outputs = {name: np.inf for name in rows}, {}
    for _ in range(rounds):
        for name, (function, argument) in rows.items():
            start = time.perf_counter()
            outputs[name] = function(argument)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs


def print_table(title, best, outputs, reference, n):
    print(f"\n{title}\n")
    print("| implementation | ms / image | images / s | speed vs scikit-image | max abs diff to "
          "scikit-image | correlation |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds in best.items():
        if outputs[name] is None:
            print(f"| {name} | n/a | n/a | n/a | n/a | n/a |")
            continue
        diff = np.abs(outputs[name].astype(np.float64) - outputs[reference]).max()
        corr = np.corrcoef(outputs[name].ravel(), outputs[reference].ravel())[0, 1]
        print(f"| {name} | {seconds / n * 1e3:.3f} | {n / seconds:,.0f} | "
              f"{best[reference] / seconds:.2f}x | {diff:.2g} | {corr:.4f} |")


def threads_table(films, rounds):
    """HOGFeatures n_jobs=1 vs -1 on batches of 8 and 64, each batch followed by the
    embedder's onnxruntime run (2 intra-op threads), spin-waiting on and off."""
    import onnxruntime as ort

    print("\nHOGFeatures n_jobs beside the CNN: each batch's HOG, then the packaged embedder "
          "(onnxruntime, 2 intra-op threads) on it; median (min) ms per image over "
          f"{rounds} rounds of {min(128, len(films))} images\n")
    print("| onnxruntime spin-wait | batch | n_jobs | HOG ms / image | HOG + CNN ms / image |")
    print("|---|---:|---:|---:|---:|")
    for spinning in ("1", "0"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(EMBEDDER), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch_size in (8, 64):
            cnn_input = np.repeat(films[:batch_size, None], 3, axis=1).astype(np.float32)
            session.run(None, {name: cnn_input})
            times = {1: [], -1: []}
            for _ in range(rounds):
                for n_jobs in (1, -1):
                    for start in range(0, min(128, len(films)) - batch_size + 1, batch_size):
                        batch = films[start:start + batch_size]
                        t0 = time.perf_counter()
                        HOGFeatures(n_jobs=n_jobs).transform(batch)
                        t1 = time.perf_counter()
                        session.run(None, {name: cnn_input})
                        t2 = time.perf_counter()
                        times[n_jobs].append(((t1 - t0) / batch_size, (t2 - t0) / batch_size))
            for n_jobs, values in times.items():
                values = np.asarray(values) * 1e3
                print(f"| {'on' if spinning == '1' else 'off'} | {batch_size} | {n_jobs} | "
                      f"{np.median(values[:, 0]):.3f} ({values[:, 0].min():.3f}) | "
                      f"{np.median(values[:, 1]):.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--n", type=int, default=400, help="train/ JPEGs (a random sample)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-threads", action="store_true", help="skip the n_jobs table")
    args = parser.parse_args(argv)

    paths = list(index_dataset(args.data).subset("train").paths)
    rng = np.random.default_rng(args.seed)
    paths = [paths[i] for i in sorted(rng.choice(len(paths), min(args.n, len(paths)),
                                                  replace=False))]
    films = np.asarray(extract_preprocessed(paths), dtype=np.float32)
    small = np.stack([resize_to(film, SIZE, SIZE) for film in films])
    n = len(films)
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {n} train/ JPEGs preprocessed "
          f"once ({films.shape[1]} px); best of {args.rounds} interleaved rounds; one thread "
          f"(n_jobs=1); numpy {np.__version__}, scikit-image {skimage.__version__}, "
          f"OpenCV {cv2.__version__}; load average {os.getloadavg()[0]:.1f} at start")

    per_image = lambda describe: (lambda images: np.stack([describe(im) for im in images]))  # noqa: E731
    gaussian, flat = cv2_descriptor(-1), cv2_descriptor(1e6)
    rows = {
        "skimage.feature.hog, per image": (per_image(skimage_hog), small),
        "main's hog_l2hys, per image": (per_image(
            lambda im: main_hog_l2hys(im, ORIENTATIONS, CELL, BLOCK)), small),
        "hog_l2hys (this branch), per image": (per_image(
            lambda im: hog_l2hys(im, ORIENTATIONS, CELL, BLOCK)), small),
        "hog_l2hys_batch (this branch), whole batch": (
            lambda images: hog_l2hys_batch(images, ORIENTATIONS, CELL, BLOCK), small),
        "cv2.HOGDescriptor, Gaussian block window (default)": (
            (lambda images: cv2_rows(gaussian, images)) if gaussian else (lambda images: None),
            small),
        "cv2.HOGDescriptor, flat block window (winSigma 1e6)": (
            (lambda images: cv2_rows(flat, images)) if flat else (lambda images: None), small),
    }
    best, outputs = timed_table(rows, args.rounds)
    print_table(f"HOG of {n} 128-px images", best, outputs, "skimage.feature.hog, per image", n)

    rows = {
        "validate + resize + skimage.feature.hog": (extractor_path(skimage_hog), films),
        "validate + resize + main's hog_l2hys (main's HOGFeatures)": (
            extractor_path(lambda im: main_hog_l2hys(im, ORIENTATIONS, CELL, BLOCK)), films),
        "HOGFeatures(n_jobs=1).transform (this branch)": (HOGFeatures(n_jobs=1).transform, films),
    }
    best, outputs = timed_table(rows, args.rounds)
    print_table(f"HOGFeatures from {n} 224-px preprocessed images (resize to 128 included)",
                best, outputs, "validate + resize + skimage.feature.hog", n)

    if not args.no_threads:
        threads_table(films, rounds=3)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
