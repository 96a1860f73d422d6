"""Acquisition re-renderings of raw films: the fixed stress tests of the
studies, and the random ones that `finetune_224.py` trains on.

Both act on the raw film in [0, 1], before CLAHE, as a different scanner or
export would have."""

from __future__ import annotations

import cv2
import numpy as np

from transforms import EqualizeSharpness, Intensity

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
