"""Image sharpness, and a step that brings every image to the same sharpness.

In the Kermany training set NORMAL images are sharper than PNEUMONIA ones
(their originals were larger), so sharpness alone predicts the label
(AUC 0.79 on train/); at a new site that cue misleads. `EqualizeSharpness`
blurs each image just enough that its Laplacian variance is at most
``target``, so a model cannot use the cue. Measured in
experiments/site_val_log.md (``*-eqsharp``): it did not help, because
sharpness is not the cue the models lean on (see experiments/aspect_study.py).
"""

from __future__ import annotations

import cv2
import numpy as np

from ._images import ImageTransformerMixin, as_images, like_input

__all__ = ["laplacian_variance", "EqualizeSharpness"]


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
