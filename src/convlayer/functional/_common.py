"""Argument checks and layout conversion shared by the functional ops.

Everything here runs before any large allocation; messages name the op,
the argument, the rule and the received values.
"""

from __future__ import annotations

import numpy as np

from ..geometry import check_real

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DATA_FORMATS = ("channels_first", "channels_last")


def as_float_array(op: str, name: str, value) -> np.ndarray:
    """``value`` as an ndarray of float32 or float64, else ``TypeError``."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must have dtype float32 or float64, got {arr.dtype}; "
            f"cast it explicitly, e.g. {name}.astype(np.float32)"
        )
    return arr


def same_dtype(op: str, **arrays) -> np.dtype:
    """The common dtype of the given arrays (``None`` entries skipped), else ``TypeError``."""
    given = {k: v for k, v in arrays.items() if v is not None}
    dtypes = {k: v.dtype for k, v in given.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{k} {d}" for k, d in dtypes.items())
        raise TypeError(f"{op}: arrays must share one dtype, got {listing}; cast them to one of float32, float64")
    return next(iter(dtypes.values()))


def to_channels_first(op: str, x: np.ndarray, rank: int, data_format: str, name: str = "input"):
    """Return ``(x as (N, C, *spatial), batched)``; accepts unbatched ``(C, *spatial)``."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"{op}: data_format={data_format!r} must be one of {DATA_FORMATS}")
    if x.ndim == rank + 2:
        batched = True
    elif x.ndim == rank + 1:
        batched = False
        x = x[None]
    else:
        raise ValueError(
            f"{op}: {name} of shape {x.shape} has {x.ndim} dims; a {rank}-d op expects {rank + 2} "
            f"(batched (N, C, *spatial)) or {rank + 1} (unbatched (C, *spatial))"
        )
    if data_format == "channels_last":
        x = np.moveaxis(x, -1, 1)  # (N, C, *spatial)
    return x, batched


def from_channels_first(y: np.ndarray, batched: bool, data_format: str) -> np.ndarray:
    """Inverse of :func:`to_channels_first` for an op's output."""
    if data_format == "channels_last":
        y = np.ascontiguousarray(np.moveaxis(y, 1, -1))  # (N, *spatial, C)
    return y if batched else y[0]


def check_grad_shape(op: str, grad: np.ndarray, expected: tuple, name: str = "grad_y") -> None:
    if grad.shape != tuple(expected):
        raise ValueError(f"{op}: {name} has shape {grad.shape}, but the op's output has shape {tuple(expected)}")


def check_padding_value(op: str, value, modes) -> float:
    """The value of a convolution's ``"zeros"`` (``"constant"``) padding, checked: a finite real number, and
    nonzero only where one of the canonical ``modes`` (one per axis) is that mode, which it fills."""
    checked = check_real(op, "padding_value", value)
    if checked and "zeros" not in modes:
        raise ValueError(f"{op}: padding_value={value!r} fills 'zeros' ('constant') padding, but padding_mode="
                         f"{tuple(modes)!r} has none; leave padding_value at 0")
    return checked
