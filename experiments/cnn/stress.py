"""Acquisition re-renderings of raw films: the fixed stress tests
(`acquisition_study.py` and `finetune_224.py` score them) and the random
re-renderings `finetune_224.py` trains on.

All act on the raw film in [0, 1], before CLAHE, as a different scanner or
export would have: grey levels (`Intensity`) and sharpness (`laplacian_variance`,
`EqualizeSharpness`). Neither helped at a new site, so neither is part of a
packaged model (docs/findings.md). Same scikit-learn conventions as the
library's steps. This module imports nothing from experiments/, so the studies
(``from cnn.stress import ...``) and the scripts in this folder (``from stress
import ...``) share it.
"""

from __future__ import annotations

import cv2
import numpy as np

from xray_features._images import ImageTransformerMixin, as_images, like_input

__all__ = ["Intensity", "laplacian_variance", "EqualizeSharpness", "STRESS",
           "random_acquisition"]


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


# the black level 0.05 is about train PNEUMONIA's median 5th percentile
# (NORMAL's is 0); sharpness 130 is train PNEUMONIA's median Laplacian variance
STRESS = {"black05": Intensity(black=0.05), "contrast85": Intensity(contrast=0.85),
          "gamma08": Intensity(gamma=0.8), "gamma125": Intensity(gamma=1.25),
          "sharpness130": EqualizeSharpness(target=130.0)}


def random_acquisition(image, rng):
    """One random re-rendering of a raw film: Gaussian blur (sigma 0-1.2, on
    7 films in 10), then `Intensity` with gamma 0.75-1.33 (log-uniform),
    contrast 0.8-1.1 and black level 0-0.08."""
    image = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.7:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.05, 1.2)))
    gamma = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    render = Intensity(gamma=gamma, contrast=float(rng.uniform(0.8, 1.1)),
                       black=float(rng.uniform(0.0, 0.08)))
    return render.transform([image])[0]
