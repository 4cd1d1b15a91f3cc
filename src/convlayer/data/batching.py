"""Mini-batch index generation."""

from __future__ import annotations

import numpy as np

from ..geometry import check_int


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None):
    """Yield index arrays covering ``range(n)`` in batches, shuffled when ``rng`` is given."""
    check_int("batches", "n", n, 0)
    check_int("batches", "batch_size", batch_size, 1)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
