"""Image transforms that only the studies use, kept out of the library.

Global histogram equalisation (`EqualizeHistogram`: experiments/image_study.py),
which did not help at a new site, so it is not part of a packaged model
(docs/findings.md). The acquisition re-renderings (`Intensity`,
`EqualizeSharpness`) are in experiments/cnn/stress.py, beside the CNN training
that uses them too. Same scikit-learn conventions as the library's steps.
"""

from __future__ import annotations

import cv2
import numpy as np

from xray_features._images import ImageTransformerMixin, as_images, like_input, to_uint8

__all__ = ["EqualizeHistogram"]


class EqualizeHistogram(ImageTransformerMixin):
    """Global histogram equalisation (OpenCV, 8 bits): every image's grey
    levels are mapped to a near-uniform histogram, whatever its exposure."""

    def transform(self, X):
        """Each image histogram-equalised on 8 bits."""
        out = [cv2.equalizeHist(to_uint8(image)).astype(np.float32) / np.float32(255.0)
               for image in as_images(X)]
        return like_input(X, out)
