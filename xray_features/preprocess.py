"""Stateless image transformers: CLAHE -> LungCrop -> Resize.

Each takes a batch of 2-D float32 images in [0, 1] (a list, or a 3-D array)
and returns images in [0, 1]. `Resize` returns a 3-D array ``(n, size, size)``.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import cv2
import numpy as np
from sklearn.pipeline import Pipeline

from ._images import (ImageTransformerMixin, as_images, crop_border, like_input, resize_to,
                      to_uint8)

__all__ = ["CLAHE", "BorderCrop", "LungCrop", "Resize", "CropBox",
           "default_preprocessor"]

logger = logging.getLogger(__name__)


class CLAHE(ImageTransformerMixin):
    """Contrast-limited adaptive histogram equalisation (OpenCV), on 8 bits.

    Parameters
    ----------
    clip_limit : float
        Contrast limit per tile (OpenCV's ``clipLimit``).
    tile_grid_size : int
        The image is split into ``tile_grid_size x tile_grid_size`` tiles.
    """

    def __init__(self, clip_limit=2.0, tile_grid_size=8):
        self.clip_limit = clip_limit
        self.tile_grid_size = tile_grid_size

    def transform(self, X):
        """Each image through OpenCV CLAHE on 8 bits, back to float32 in [0, 1]."""
        clahe = cv2.createCLAHE(
            clipLimit=float(self.clip_limit),
            tileGridSize=(int(self.tile_grid_size), int(self.tile_grid_size)),
        )
        out = []
        for image in as_images(X):
            equalised = clahe.apply(to_uint8(image))
            out.append(equalised.astype(np.float32) / np.float32(255.0))
        return like_input(X, out)


class BorderCrop(ImageTransformerMixin):
    """Cut a fixed ``fraction`` of the height and of the width off every side.

    Burned-in text and side markers sit near the film's edges; this removes
    them the same way for every image, whatever its label (unlike `LungCrop`,
    whose fallback rate differs by class). At least one pixel is kept.
    """

    def __init__(self, fraction=0.1):
        self.fraction = fraction

    def transform(self, X):
        """Each image without ``fraction`` of its height and width on every side."""
        if not 0 <= self.fraction < 0.5:
            raise ValueError(f"fraction must be in [0, 0.5), got {self.fraction!r}")
        return like_input(X, [crop_border(image, self.fraction) for image in as_images(X)])


class CropBox(NamedTuple):
    """A crop ``image[top:bottom, left:right]``; ``found`` is False for the fallback."""

    top: int
    bottom: int
    left: int
    right: int
    found: bool


class LungCrop(ImageTransformerMixin):
    """Crop to the lung fields, found by threshold and morphology.

    Method, on a copy shrunk to ``work_size`` px: Gaussian blur, Otsu
    threshold for dark pixels, opening; dark regions touching the image border
    are outside the body and are dropped; the two largest remaining regions of
    at least ``min_region`` of the image are the lungs. Their joint bounding
    box, grown by ``margin`` of its size on every side and then to at least
    ``min_box`` of each image side (the lower lobes are often missed, so the
    crop stays conservative), is the crop.

    When no plausible pair is found (e.g. a blank image) it falls back to the
    central ``fallback_fraction`` of each side. `find_boxes` tells which
    images fell back; `transform` logs how many did.
    """

    def __init__(self, margin=0.08, min_region=0.01, min_box=0.6, fallback_fraction=0.85,
                 work_size=128):
        self.margin = margin
        self.min_region = min_region
        self.min_box = min_box
        self.fallback_fraction = fallback_fraction
        self.work_size = work_size

    def transform(self, X):
        """Each image cropped to its lung box (or the central fallback); a list, shapes differ."""
        images = as_images(X)
        boxes = [self._find_box(image) for image in images]
        n_fallback = sum(not box.found for box in boxes)
        if n_fallback:
            logger.info("LungCrop: centre-crop fallback on %d of %d images", n_fallback, len(boxes))
        crops = [image[b.top:b.bottom, b.left:b.right] for image, b in zip(images, boxes)]
        return [np.ascontiguousarray(c) for c in crops]

    def find_boxes(self, X):
        """The `CropBox` of every image."""
        return [self._find_box(image) for image in as_images(X)]

    def _find_box(self, image):
        height, width = image.shape
        scale = min(1.0, self.work_size / max(height, width))
        small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
        box = _lung_box(resize_to(image, small_h, small_w), self.min_region)
        if box is None:
            return self._fallback(height, width)
        top, bottom, left, right = (v / scale for v in box)
        top, bottom = _grow(top, bottom, height, self.margin, self.min_box)
        left, right = _grow(left, right, width, self.margin, self.min_box)
        return CropBox(top, bottom, left, right, True)

    def _fallback(self, height, width):
        keep_h = max(1, round(height * self.fallback_fraction))
        keep_w = max(1, round(width * self.fallback_fraction))
        top, left = (height - keep_h) // 2, (width - keep_w) // 2
        return CropBox(top, top + keep_h, left, left + keep_w, False)


def _grow(start, stop, length, margin, min_fraction):
    """Grow [start, stop) by ``margin`` of its size each way, then to at least
    ``min_fraction`` of ``length`` about its centre; clip to the image."""
    extent = (stop - start) * (1 + 2 * margin)
    extent = min(length, max(extent, min_fraction * length))
    centre = (start + stop) / 2
    first = int(round(min(max(0.0, centre - extent / 2), length - extent)))
    return first, min(length, first + int(round(extent)))


def _lung_box(image, min_region):
    """(top, bottom, left, right) of the lung fields, or None.

    The largest dark in-body region in each half of the image is taken as a
    lung; a lung missing on one side is mirrored from the other.
    """
    height, width = image.shape
    if min(height, width) < 16:
        return None
    gray = to_uint8(image)
    if int(gray.max()) - int(gray.min()) < 16:
        return None
    sigma = max(1.0, min(height, width) / 64)
    gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    _, dark = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    size = max(3, int(2 * sigma) | 1)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    count, _, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
    best = {}  # side -> (area, x, y, w, h)
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        touches_border = x == 0 or y == 0 or x + w == width or y + h == height
        if touches_border or area < min_region * height * width:
            continue
        side = "left" if centroids[label][0] < width / 2 else "right"
        if area > best.get(side, (0,))[0]:
            best[side] = (area, x, y, w, h)
    if not best:
        return None
    boxes = [(y, y + h, x, x + w) for _, x, y, w, h in best.values()]
    if len(boxes) == 1:  # mirror the one lung found about the vertical midline
        top, bottom, left, right = boxes[0]
        boxes.append((top, bottom, width - right, width - left))
    top = min(b[0] for b in boxes)
    bottom = max(b[1] for b in boxes)
    left = min(b[2] for b in boxes)
    right = max(b[3] for b in boxes)
    return top, bottom, left, right


class Resize(ImageTransformerMixin):
    """Resize every image to ``size x size``.

    ``mode="squash"`` (default, as in `default_preprocessor`: the training
    images were squashed to squares, so real-shaped films must be too)
    stretches to the square; ``mode="pad"`` keeps the aspect ratio and pads
    the short side with ``pad_value`` (centred). Returns a float32 array
    ``(n, size, size)``.
    """

    def __init__(self, size=224, mode="squash", pad_value=0.0):
        self.size = size
        self.mode = mode
        self.pad_value = pad_value

    def transform(self, X):
        """Each image resized to ``size`` x ``size`` (``mode``: squash or pad)."""
        if self.mode not in ("pad", "squash"):
            raise ValueError(f"mode must be 'pad' or 'squash', got {self.mode!r}")
        size = int(self.size)
        images = as_images(X)
        out = np.empty((len(images), size, size), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self._resize_one(image, size)
        return out

    def _resize_one(self, image, size):
        if self.mode == "squash":
            return resize_to(image, size, size)
        height, width = image.shape
        scale = size / max(height, width)
        new_h = min(size, max(1, round(height * scale)))
        new_w = min(size, max(1, round(width * scale)))
        canvas = np.full((size, size), self.pad_value, dtype=np.float32)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        canvas[top:top + new_h, left:left + new_w] = resize_to(image, new_h, new_w)
        return canvas


def default_preprocessor(size=224, crop=False, resize_mode="squash"):
    """The shared preprocessing chain: CLAHE -> [LungCrop] -> Resize.

    LungCrop is off by default and resizing squashes to the square, as the
    Kermany training images were squashed; docs/findings.md gives the
    measurements behind both.
    """
    steps = [("clahe", CLAHE())]
    if crop:
        steps.append(("crop", LungCrop()))
    steps.append(("resize", Resize(size=size, mode=resize_mode)))
    return Pipeline(steps)
