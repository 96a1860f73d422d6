"""Texture features: HOG and multi-scale uniform LBP (scikit-image).

Both resize each input image to ``image_size x image_size`` first (the input
is the shared preprocessed image) and return float32 rows.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from skimage.feature import hog, local_binary_pattern

from ._images import ImageFeatureExtractor, to_uint8

__all__ = ["HOGFeatures", "LBPFeatures", "hog_length", "hog_l2hys"]


def hog_length(image_size, orientations, pixels_per_cell, cells_per_block):
    """Length of the HOG vector of a square image (scikit-image's layout)."""
    cells = image_size // pixels_per_cell
    blocks = cells - cells_per_block + 1
    return blocks * blocks * cells_per_block * cells_per_block * orientations


def hog_l2hys(image, orientations, pixels_per_cell, cells_per_block, eps=1e-5):
    """``skimage.feature.hog(image, ..., block_norm="L2-Hys", feature_vector=True)``
    for a 2-D image with square cells and blocks, vectorised with NumPy.

    It follows scikit-image's steps (central-difference gradients in the
    image's float type, magnitude and unsigned orientation in float64, a
    histogram per cell with the same float32 bin edges, each cell's sum
    divided by its area and rounded to float32, then L2-Hys over every block)
    but replaces the per-bin, per-cell and per-block loops with one
    ``bincount`` and array arithmetic: about 3x faster on 128 px images.
    The output equals scikit-image's up to float32 rounding of the cell sums
    (summation order); ``tests/test_texture.py`` checks it.
    """
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
    # == orientation % 180 (NumPy's floored modulo) for values in [-180, 180], faster.
    orientation[orientation >= 180.0] -= 180.0
    orientation[orientation < 0] += 180.0
    # scikit-image's bin i is [w*i, w*(i+1)) with w = float32(180 / n) and the
    # edges computed in float32; a value at or past the last edge is dropped.
    # Estimate the bin by division, then correct it against the exact edges.
    edges, cell_of = _hog_layout(height, width, cell, orientations)
    bins = np.minimum((orientation * (orientations / 180.0)).astype(np.intp), orientations)
    bins -= orientation < edges[bins]
    bins += orientation >= edges[bins + 1]
    keep = bins < orientations
    index = cell_of[keep] * orientations + bins[keep]
    sums = np.bincount(index, weights=magnitude[keep], minlength=n_rows * n_cols * orientations)
    histogram = (sums.astype(np.float32) / np.float32(cell * cell)).astype(np.float64)
    histogram = histogram.reshape(n_rows, n_cols, orientations)
    blocks = sliding_window_view(histogram, (block, block), axis=(0, 1))
    blocks = blocks.transpose(0, 1, 3, 4, 2)  # (block rows, block cols, block, block, orient.)
    axes = (2, 3, 4)
    out = blocks / np.sqrt(np.sum(blocks ** 2, axis=axes, keepdims=True) + eps ** 2)
    out = np.minimum(out, 0.2)
    out = out / np.sqrt(np.sum(out ** 2, axis=axes, keepdims=True) + eps ** 2)
    return out.astype(float_dtype).ravel()


@lru_cache(maxsize=32)
def _hog_layout(height, width, cell, orientations):
    """The float32 bin edges (padded with +inf) and each pixel's flat cell index."""
    step = np.float32(180.0 / orientations)
    edges = (step * np.arange(orientations + 1, dtype=np.float32)).astype(np.float64)
    edges = np.concatenate([edges, [np.inf]])
    cell_of = (np.arange(height)[:, None] // cell * (width // cell)
               + np.arange(width)[None, :] // cell).ravel()
    edges.flags.writeable = False
    cell_of.flags.writeable = False
    return edges, cell_of


class HOGFeatures(ImageFeatureExtractor):
    """Histogram of oriented gradients, L2-Hys block normalisation.

    Parameters
    ----------
    image_size : int
        Images are resized to this square size first.
    orientations, pixels_per_cell, cells_per_block : int
        As in `skimage.feature.hog` (square cells and blocks).
    n_jobs : int, optional
        Parallel jobs over images.
    """

    def __init__(self, image_size=128, orientations=9, pixels_per_cell=16, cells_per_block=2,
                 n_jobs=None):
        self.image_size = image_size
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.n_jobs = n_jobs

    def _extract(self, image):
        return hog_l2hys(image, self.orientations, self.pixels_per_cell,
                         self.cells_per_block).astype(np.float32)

    def _feature_names(self):
        n = hog_length(self.image_size, self.orientations, self.pixels_per_cell,
                       self.cells_per_block)
        return [f"hog_{i}" for i in range(n)]


class LBPFeatures(ImageFeatureExtractor):
    """Uniform local binary patterns, as per-cell histograms over a grid.

    For every ``(P, R)`` in ``scales``, the 'uniform' LBP codes (``P + 2``
    values) are histogrammed in each cell of a ``grid x grid`` split of the
    image; each cell histogram sums to 1.

    Parameters
    ----------
    image_size : int
        Images are resized to this square size first.
    scales : sequence of (P, R)
        Neighbour count and radius of each LBP operator.
    grid : int
        Cells per side.
    n_jobs : int, optional
        Parallel jobs over images.
    """

    def __init__(self, image_size=128, scales=((8, 1), (16, 2)), grid=4, n_jobs=None):
        self.image_size = image_size
        self.scales = scales
        self.grid = grid
        self.n_jobs = n_jobs

    def _extract(self, image):
        gray = to_uint8(image)
        edges = np.linspace(0, self.image_size, self.grid + 1).astype(int)
        parts = []
        for points, radius in self.scales:
            codes = local_binary_pattern(gray, points, radius, method="uniform").astype(np.int64)
            n_bins = points + 2
            for r in range(self.grid):
                for c in range(self.grid):
                    cell = codes[edges[r]:edges[r + 1], edges[c]:edges[c + 1]]
                    counts = np.bincount(cell.ravel(), minlength=n_bins)[:n_bins]
                    parts.append(counts / max(1, cell.size))
        return np.concatenate(parts).astype(np.float32)

    def _feature_names(self):
        return [
            f"lbp_P{points}_R{radius}_cell{r}_{c}_bin{b}"
            for points, radius in self.scales
            for r in range(self.grid)
            for c in range(self.grid)
            for b in range(points + 2)
        ]
