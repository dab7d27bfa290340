"""scikit-learn's digits: 1797 real 8x8 handwritten digits that ship inside the package."""
from __future__ import annotations

import numpy as np


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [1797, 1, 8, 8] in [0, 1], y int64 [1797])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, d.target.astype(np.int64)
