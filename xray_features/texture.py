"""Texture features: HOG and multi-scale uniform LBP (scikit-image).

Both resize each input image to ``image_size x image_size`` first (the input
is the shared preprocessed image) and return float32 rows.
"""

from __future__ import annotations

import numpy as np
from skimage.feature import hog, local_binary_pattern

from ._images import ImageFeatureExtractor, to_uint8

__all__ = ["HOGFeatures", "LBPFeatures", "hog_length"]


def hog_length(image_size, orientations, pixels_per_cell, cells_per_block):
    """Length of the HOG vector of a square image (scikit-image's layout)."""
    cells = image_size // pixels_per_cell
    blocks = cells - cells_per_block + 1
    return blocks * blocks * cells_per_block * cells_per_block * orientations


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
        return hog(
            image,
            orientations=self.orientations,
            pixels_per_cell=(self.pixels_per_cell, self.pixels_per_cell),
            cells_per_block=(self.cells_per_block, self.cells_per_block),
            block_norm="L2-Hys",
            feature_vector=True,
        ).astype(np.float32)

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
