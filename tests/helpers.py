"""Shared test helpers: an error bound that scales with the sum, and torch adapters."""

from __future__ import annotations

import numpy as np


def assert_within_bound(actual, expected, magnitude, terms, dtype=np.float64, factor=4.0):
    """``|actual - expected| <= factor * terms * eps * magnitude`` elementwise.

    ``magnitude`` is the same computation on absolute values (``sum |x||w|``),
    ``terms`` the number of products summed per output. This is the standard
    forward error bound of a dot product, not a fixed tolerance.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    eps = np.finfo(dtype).eps
    bound = factor * max(terms, 1) * eps * np.asarray(magnitude, np.float64) + np.finfo(np.float64).tiny
    err = np.abs(actual - expected)
    bad = ~(err <= bound)
    both_nan = np.isnan(actual) & np.isnan(expected)
    bad &= ~both_nan
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} elements outside the bound; worst error {err[bad].max():.3e} "
        f"vs bound {bound[bad].min():.3e}"
    )


def max_rel_err(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    if scale == 0.0:
        return float(np.max(np.abs(actual))) if actual.size else 0.0
    return float(np.max(np.abs(actual - expected)) / scale)


TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def torch_pad_arg(pads):
    """(lo, hi) pairs per spatial axis to torch.nn.functional.pad's last-axis-first list."""
    out = []
    for lo, hi in reversed(pads):
        out += [lo, hi]
    return out
