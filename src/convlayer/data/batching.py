"""Mini-batch index generation."""

from __future__ import annotations

import numpy as np


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None):
    """Yield index arrays covering ``range(n)`` in batches, shuffled when ``rng`` is given."""
    if n < 0 or batch_size < 1:
        raise ValueError(f"batches: n={n} must be >= 0 and batch_size={batch_size} >= 1")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
