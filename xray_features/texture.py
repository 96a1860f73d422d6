"""Texture features: HOG and multi-scale uniform LBP (scikit-image).

Both resize each input image to ``image_size x image_size`` first (the input
is the shared preprocessed image) and return float32 rows.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from joblib import Parallel, delayed
from numpy.lib.stride_tricks import sliding_window_view
from skimage.feature import hog, local_binary_pattern

from ._images import ImageFeatureExtractor, as_images, resize_to, to_uint8

__all__ = ["HOGFeatures", "LBPFeatures", "hog_length", "hog_l2hys", "hog_l2hys_batch"]


_HOG_CHUNK = 8  # images per set of array operations in hog_l2hys_batch (fastest measured)
_PARALLEL_FROM = 64  # HOGFeatures(n_jobs=...) uses threads from this many images on,
_PARALLEL_PART = 32  # over parts of this many images


def hog_length(image_size, orientations, pixels_per_cell, cells_per_block):
    """Length of the HOG vector of a square image (scikit-image's layout)."""
    return _hog_length_2d(image_size, image_size, orientations, pixels_per_cell,
                         cells_per_block)


def _hog_length_2d(height, width, orientations, pixels_per_cell, cells_per_block):
    """Length of the HOG vector of a ``height x width`` image (square cells and blocks)."""
    block_rows = height // pixels_per_cell - cells_per_block + 1
    block_cols = width // pixels_per_cell - cells_per_block + 1
    return block_rows * block_cols * cells_per_block * cells_per_block * orientations


def hog_l2hys(image, orientations, pixels_per_cell, cells_per_block, eps=1e-5):
    """HOG of one 2-D image, as scikit-image computes it with L2-Hys.

    The same numbers as ``skimage.feature.hog(image, orientations,
    (pixels_per_cell,) * 2, (cells_per_block,) * 2, block_norm="L2-Hys",
    feature_vector=True)`` up to float32 rounding, computed by
    `hog_l2hys_batch` on a batch of one image.

    Parameters
    ----------
    image : array_like, shape (height, width)
        A grayscale image of any real dtype.
    orientations : int
        Number of orientation bins over [0, 180) degrees.
    pixels_per_cell : int
        Side of a square cell in pixels.
    cells_per_block : int
        Side of a square block in cells.
    eps : float, optional
        The L2-Hys regulariser, as in scikit-image.

    Returns
    -------
    ndarray, shape (n_features,)
        float32 for float16 and float32 images, float64 otherwise (like
        scikit-image). Anything but a 2-D image at least one block in size
        is passed to scikit-image's ``hog`` (which rejects it).
    """
    image = np.asarray(image)
    cell, block = int(pixels_per_cell), int(cells_per_block)
    if (image.ndim != 2 or image.shape[0] // cell < block or image.shape[1] // cell < block
            or image.dtype.kind not in "biuf"):
        return hog(image, orientations=orientations, pixels_per_cell=(cell, cell),
                   cells_per_block=(block, block), block_norm="L2-Hys", feature_vector=True)
    return hog_l2hys_batch(image[None], orientations, cell, block, eps=eps)[0]


def hog_l2hys_batch(images, orientations, pixels_per_cell, cells_per_block, eps=1e-5,
                    chunk_size=_HOG_CHUNK):
    """`hog_l2hys` of every image of a batch, vectorised across the batch.

    It follows scikit-image's steps: central-difference gradients in
    the images' float type, magnitude ``sqrt(g_col**2 + g_row**2)`` and the
    unsigned orientation ``rad2deg(arctan2(g_row, g_col)) % 180`` in float64,
    each pixel in bin ``i`` when ``edge[i] <= orientation < edge[i + 1]``
    with scikit-image's float32 edges ``float32(180 / orientations) * i``
    (an orientation at or past the last edge, or NaN, is in no bin), each
    cell's sum divided by the cell area and rounded to float32, then L2-Hys
    over every block of cells. The cell sums are added in float64 where
    scikit-image adds into float32, so outputs differ from its by float32
    rounding (at most 1.5e-7 on train/ films); the bins are the same. Instead of a Python loop
    per image, per bin, per cell and per block, each chunk of
    ``chunk_size`` images goes through one set of array operations: the
    bin is counted with one comparison per edge into a uint8 array, and one
    ``bincount`` fills every cell histogram of the chunk.

    Parameters
    ----------
    images : array_like, shape (n_images, height, width)
        Grayscale images of one shape and any real dtype.
    orientations, pixels_per_cell, cells_per_block, eps
        As in `hog_l2hys`.
    chunk_size : int, optional
        Images per set of array operations (bounds the float64 temporaries
        at about ``48 * chunk_size * height * width`` bytes).

    Returns
    -------
    ndarray, shape (n_images, n_features)
        Row ``i`` is ``hog_l2hys(images[i], ...)``; float32 for float16 and
        float32 images, float64 otherwise.

    Raises
    ------
    ValueError
        If ``images`` is not 3-D or an image is smaller than one block.
    """
    images = np.asarray(images)
    cell, block = int(pixels_per_cell), int(cells_per_block)
    if images.ndim != 3:
        raise ValueError(f"expected a batch of 2-D images, got shape {images.shape}")
    if images.shape[1] // cell < block or images.shape[2] // cell < block:
        raise ValueError(f"images of shape {images.shape[1:]} are smaller than one block "
                         f"of {block} x {block} cells of {cell} px")
    float_dtype = np.float32 if images.dtype in (np.float16, np.float32) else np.float64
    n_features = _hog_length_2d(images.shape[1], images.shape[2], orientations, cell, block)
    out = np.empty((len(images), n_features), float_dtype)
    chunk_size = max(1, int(chunk_size))
    for start in range(0, len(images), chunk_size):
        out[start:start + chunk_size] = _hog_chunk(
            images[start:start + chunk_size], int(orientations), cell, block, eps, float_dtype,
            chunk_size)
    return out


def _hog_chunk(images, orientations, cell, block, eps, float_dtype, chunk_size):
    """`hog_l2hys_batch` of at most ``chunk_size`` images, as float64 rows."""
    n, rows, cols = images.shape
    n_rows, n_cols = rows // cell, cols // cell
    height, width = n_rows * cell, n_cols * cell  # scikit-image ignores the rest
    images = images.astype(float_dtype, copy=False)
    # Gradients in the image dtype (as scikit-image), stored straight into
    # float64; zero on the image's first and last row / column.
    g_row = np.empty((n, height, width))
    g_col = np.empty((n, height, width))
    last = max(1, min(height, rows - 1))  # rows 1 .. last - 1 have both neighbours
    g_row[:, 0] = 0
    g_row[:, last:] = 0
    np.subtract(images[:, 2:last + 1, :width], images[:, :last - 1, :width],
                out=g_row[:, 1:last], dtype=float_dtype)
    last = max(1, min(width, cols - 1))
    g_col[:, :, 0] = 0
    g_col[:, :, last:] = 0
    np.subtract(images[:, :height, 2:last + 1], images[:, :height, :last - 1],
                out=g_col[:, :, 1:last], dtype=float_dtype)
    magnitude = np.multiply(g_col, g_col)
    scratch = np.multiply(g_row, g_row)
    magnitude += scratch
    np.sqrt(magnitude, out=magnitude)
    orientation = np.arctan2(g_row, g_col, out=g_row)
    np.rad2deg(orientation, out=orientation)
    # == orientation % 180 (NumPy's floored modulo) for values in [-180, 180]:
    # +180 below 0, -180 at 180, computed without masked (where=) operations.
    shift = (orientation < 0).view(np.int8)
    shift -= (orientation >= 180.0).view(np.int8)
    np.multiply(shift, 180.0, out=scratch)
    orientation += scratch
    # Bin i <=> edge[i] <= orientation < edge[i + 1]: count the edges above the
    # orientation (uint8, one comparison per edge); NaN lands past the last bin.
    edges, slot = _hog_layout(height, width, cell, orientations, chunk_size)
    above = np.zeros(orientation.shape, np.uint8 if orientations < 255 else np.intp)
    below = np.empty(orientation.shape, bool)
    for edge in edges:
        np.less(orientation, edge, out=below)
        above += below
    # slot = (image, cell) offset + orientations: index = slot - above is the
    # pixel's (image, cell, bin) place, bin ``orientations`` holding the dropped.
    index = slot[:n] - above.reshape(n, -1)
    n_bins = orientations + 1
    sums = np.bincount(index.ravel(), weights=magnitude.ravel(),
                       minlength=n * n_rows * n_cols * n_bins)
    histogram = (sums.astype(np.float32) / np.float32(cell * cell)).astype(np.float64)
    histogram = histogram.reshape(n, n_rows, n_cols, n_bins)[..., :orientations]
    blocks = sliding_window_view(histogram, (block, block), axis=(1, 2))
    # (image, block row, block col, cell row, cell col, orientation), each
    # block contiguous so its sums add in scikit-image's order.
    blocks = blocks.transpose(0, 1, 2, 4, 5, 3).reshape(n, -1, block * block * orientations)
    out = blocks / np.sqrt(np.sum(blocks ** 2, axis=-1, keepdims=True) + eps ** 2)
    np.minimum(out, 0.2, out=out)
    out /= np.sqrt(np.sum(out ** 2, axis=-1, keepdims=True) + eps ** 2)
    return out.reshape(n, -1)


@lru_cache(maxsize=16)
def _hog_layout(height, width, cell, orientations, chunk_size):
    """scikit-image's float32 bin edges ``1..orientations`` (as float64) and,
    for ``chunk_size`` images, each pixel's ``(image, cell)`` histogram offset
    plus ``orientations`` (read-only arrays, cached per shape)."""
    step = np.float32(180.0 / orientations)
    edges = (step * np.arange(1, orientations + 1, dtype=np.float32)).astype(np.float64)
    n_cols = width // cell
    cell_of = (np.arange(height)[:, None] // cell * n_cols
               + np.arange(width)[None, :] // cell).ravel()
    n_bins = orientations + 1
    per_image = (height // cell) * n_cols * n_bins
    slot = cell_of * n_bins + orientations + (np.arange(chunk_size) * per_image)[:, None]
    edges.flags.writeable = False
    slot.flags.writeable = False
    return edges, slot


class HOGFeatures(ImageFeatureExtractor):
    """Histogram of oriented gradients, L2-Hys block normalisation.

    Parameters
    ----------
    image_size : int
        Images are resized to this square size first.
    orientations, pixels_per_cell, cells_per_block : int
        As in `skimage.feature.hog` (square cells and blocks).
    n_jobs : int, optional
        Threads over parts of the batch (used from 64 images on; ``None``
        or 1: none). On 2 cores they do not pay: no faster alone, and
        slower right after onnxruntime's 2 threads in the same process
        (``benchmarks/hog_impl.py``), so leave it ``None`` there.

    Notes
    -----
    `transform` resizes the images into one float32 batch and describes it
    with `hog_l2hys_batch`: the same rows as scikit-image's ``hog`` up to
    float32 rounding (``tests/test_texture.py``).
    """

    def __init__(self, image_size=128, orientations=9, pixels_per_cell=16, cells_per_block=2,
                 n_jobs=None):
        self.image_size = image_size
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.n_jobs = n_jobs

    def transform(self, X):
        """(n, n_features) float32 HOG rows of the images ``X``.

        Parameters
        ----------
        X : array_like or sequence of 2-D arrays
            The images (any sizes): each is resized to ``image_size`` first.

        Returns
        -------
        ndarray, shape (n_images, n_features)
            float32.
        """
        images = as_images(X)
        if self.n_jobs in (None, 1) or len(images) < _PARALLEL_FROM:
            return self._describe(images)
        parts = [images[i:i + _PARALLEL_PART] for i in range(0, len(images), _PARALLEL_PART)]
        rows = Parallel(n_jobs=self.n_jobs, prefer="threads")(
            delayed(self._describe)(part) for part in parts)
        return np.vstack(rows)

    def _describe(self, images):
        """HOG rows of a list of 2-D float32 images: resized into one batch."""
        size = self.image_size
        batch = np.empty((len(images), size, size), np.float32)
        for i, image in enumerate(images):
            batch[i] = resize_to(image, size, size)
        return hog_l2hys_batch(batch, self.orientations, self.pixels_per_cell,
                               self.cells_per_block).astype(np.float32, copy=False)

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
