"""Image transforms that only the studies use, kept out of the library.

Re-framing (`Reframe`, `RandomReframe`: experiments/reframe_study.py), grey-level
re-rendering (`Intensity`: the acquisition stress tests, experiments/stress.py),
global histogram equalisation (`EqualizeHistogram`: experiments/image_study.py)
and sharpness (`laplacian_variance`, `EqualizeSharpness`: experiments/
acquisition_study.py). None of them helped at a new site, so none is part of a
packaged model (docs/findings.md). Same scikit-learn conventions as the
library's steps.
"""

from __future__ import annotations

import cv2
import numpy as np

from xray_features._images import (ImageTransformerMixin, as_images, like_input, resize_to,
                                   to_uint8)
from xray_features.augment import check_random_cut, image_rng

__all__ = ["Reframe", "RandomReframe", "Intensity", "EqualizeHistogram", "laplacian_variance",
           "EqualizeSharpness"]


class RandomReframe(ImageTransformerMixin):
    """Re-frame each film by its own random cuts (`Reframe`): up to
    ``max_fraction`` of the height off the top and, drawn independently, off
    the bottom; the same total off the sides, split at random, so the content
    keeps its aspect ratio. Seeded by ``random_state`` and the image's content,
    like `RandomZoom` (its centred special case)."""

    def __init__(self, max_fraction=0.1, random_state=0):
        self.max_fraction = max_fraction
        self.random_state = random_state

    def transform(self, X):
        """Each image cut by its own random fractions (seeded by ``random_state``)."""
        check_random_cut(self.max_fraction, self.random_state)
        return like_input(X, [Reframe(*self.cuts(image))._reframe(image)
                              for image in as_images(X)])

    def cuts(self, image):
        """``(top, bottom, left, right)`` fractions for ``image``."""
        rng = image_rng(image, self.random_state)
        top, bottom = rng.uniform(0, self.max_fraction, size=2)
        split = rng.uniform(0, 1)
        total = top + bottom
        return float(top), float(bottom), float(total * split), float(total * (1 - split))


class Reframe(ImageTransformerMixin):
    """Cut fractions of the film's height off its ``top`` and ``bottom`` and of
    its width off its ``left`` and ``right``, and resize back to the input's
    shape: the film as a tighter collimation would have framed it.

    With equal vertical and horizontal totals (``top + bottom == left + right``)
    the content keeps its aspect ratio; `RandomZoom` is the centred case.
    """

    def __init__(self, top=0.0, bottom=0.0, left=0.0, right=0.0):
        self.top = top
        self.bottom = bottom
        self.left = left
        self.right = right

    def transform(self, X):
        """Each image with the given fractions cut off its edges."""
        cuts = (self.top, self.bottom, self.left, self.right)
        if not (all(c >= 0 for c in cuts) and self.top + self.bottom < 1
                and self.left + self.right < 1):
            raise ValueError("cuts must be >= 0 and leave part of the film, got "
                             f"top={self.top!r}, bottom={self.bottom!r}, "
                             f"left={self.left!r}, right={self.right!r}")
        return like_input(X, [self._reframe(image) for image in as_images(X)])

    def _reframe(self, image):
        height, width = image.shape
        top, bottom = round(height * self.top), round(height * self.bottom)
        left, right = round(width * self.left), round(width * self.right)
        kept = image[top:max(top + 1, height - bottom), left:max(left + 1, width - right)]
        return resize_to(kept, height, width)


class Intensity(ImageTransformerMixin):
    """Re-render grey levels: ``x -> x ** gamma``, then scale the contrast about
    the image's mean by ``contrast``, then lift the black level:
    ``x -> black + (1 - black) x``; clipped to [0, 1].

    The defaults leave an image unchanged (up to the clip).
    """

    def __init__(self, gamma=1.0, contrast=1.0, black=0.0):
        self.gamma = gamma
        self.contrast = contrast
        self.black = black

    def transform(self, X):
        """Each image re-rendered with ``gamma``, ``contrast`` and ``black`` level."""
        if not (self.gamma > 0 and self.contrast >= 0 and 0 <= self.black < 1):
            raise ValueError("need gamma > 0, contrast >= 0 and 0 <= black < 1, got "
                             f"gamma={self.gamma!r}, contrast={self.contrast!r}, "
                             f"black={self.black!r}")
        return like_input(X, [self._render(image) for image in as_images(X)])

    def _render(self, image):
        image = np.clip(image, 0.0, 1.0) ** np.float32(self.gamma)
        mean = image.mean(dtype=np.float64)
        image = mean + np.float32(self.contrast) * (image - np.float32(mean))
        image = self.black + (1 - self.black) * np.clip(image, 0.0, 1.0)
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


class EqualizeHistogram(ImageTransformerMixin):
    """Global histogram equalisation (OpenCV, 8 bits): every image's grey
    levels are mapped to a near-uniform histogram, whatever its exposure."""

    def transform(self, X):
        """Each image histogram-equalised on 8 bits."""
        out = [cv2.equalizeHist(to_uint8(image)).astype(np.float32) / np.float32(255.0)
               for image in as_images(X)]
        return like_input(X, out)


def laplacian_variance(image):
    """Variance of the Laplacian of ``image`` (in [0, 1]) on a 0-255 scale."""
    scaled = np.asarray(image, dtype=np.float32) * np.float32(255.0)
    return float(cv2.Laplacian(scaled, cv2.CV_32F).var())


class EqualizeSharpness(ImageTransformerMixin):
    """Gaussian-blur each image down to a Laplacian variance of ``target``.

    Images already at or below ``target`` are left as they are. The blur
    sigma is found by bisection (``steps`` halvings of ``[0, max_sigma]``).
    Apply it at a fixed image size (after `Resize`): the variance depends on
    the scale.

    Parameters
    ----------
    target : float
        Laplacian variance (0-255 scale) to bring sharper images down to.
    max_sigma : float
    steps : int
    """

    def __init__(self, target=60.0, max_sigma=4.0, steps=10):
        self.target = target
        self.max_sigma = max_sigma
        self.steps = steps

    def transform(self, X):
        """Each image blurred or sharpened towards the target Laplacian variance."""
        out = [self._equalize(np.asarray(image, dtype=np.float32)) for image in as_images(X)]
        return like_input(X, out)

    def _equalize(self, image):
        if laplacian_variance(image) <= self.target:
            return image
        low, high = 0.0, float(self.max_sigma)
        best = cv2.GaussianBlur(image, (0, 0), high)
        for _ in range(int(self.steps)):
            sigma = (low + high) / 2
            blurred = cv2.GaussianBlur(image, (0, 0), sigma)
            if laplacian_variance(blurred) <= self.target:
                high, best = sigma, blurred
            else:
                low = sigma
        return best
