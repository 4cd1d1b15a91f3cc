"""N-d max and average pooling, and global pooling, each with its backward.

Pooling uses the same padding spec as convolution (ints, ``(lo, hi)``
pairs, ``"same"`` ...). Max pooling ignores padded positions (they are
``-inf``); average pooling counts them in the divisor only when
``count_include_pad``. With ``ceil_mode`` a last partial window is kept
when it starts inside the input or its low padding; the part of it past
the padded input is never counted. Padding may reach past half the kernel
(PyTorch refuses that): a window that lies wholly in the padding gives
``-inf`` (the maximum of nothing) and, without ``count_include_pad``, an
average of 0.

The number of spatial axes is ``len(kernel_size)`` when a tuple is given,
else ``x.ndim - 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import _config
from ..engine.windows import make_plan
from ..geometry import check_bool, normalize_tuple, pool_output_size, resolve_padding
from ..padding import _pad
from ._common import as_float_array, check_grad_shape, from_channels_first, to_channels_first

__all__ = [
    "max_pool",
    "max_pool_backward",
    "avg_pool",
    "avg_pool_backward",
    "global_max_pool",
    "global_max_pool_backward",
    "global_avg_pool",
    "global_avg_pool_backward",
]


@dataclass(frozen=True)
class _PoolGeometry:
    in_shape: tuple[int, ...]  # (N, C, *S)
    out: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]  # user padding
    ext: tuple[tuple[int, int], ...]  # padding plus the ceil-mode tail
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def axes(self):
        return tuple(range(2, len(self.in_shape)))

    @property
    def out_shape(self):
        return (*self.in_shape[:2], *self.out)

    def taps(self):
        """``(tap index, index tuple)``: the strided view of the padded input each kernel tap reads."""
        for t, m in enumerate(np.ndindex(*self.kernel)):
            yield t, (slice(None), slice(None), *(
                slice(mi * d, mi * d + (o - 1) * s + 1, s)
                for mi, d, o, s in zip(m, self.dilation, self.out, self.stride)))


def _rank(x, kernel_size):
    if isinstance(kernel_size, (tuple, list)):
        return len(kernel_size)
    return x.ndim - 2


def _setup(op, x, kernel_size, stride, padding, dilation, ceil_mode, data_format):
    x = as_float_array(op, "input", x)
    rank = _rank(x, kernel_size)
    if rank < 1:
        raise ValueError(f"{op}: input of shape {x.shape} has no spatial axis; expected (N, C, *spatial)")
    x, batched = to_channels_first(op, x, rank, data_format)
    kernel = normalize_tuple(kernel_size, rank, "kernel_size", minimum=1, op=op)
    stride = kernel if stride is None else normalize_tuple(stride, rank, "stride", minimum=1, op=op)
    dilation = normalize_tuple(dilation, rank, "dilation", minimum=1, op=op)
    ceil_mode = check_bool(op, "ceil_mode", ceil_mode)
    spatial = x.shape[2:]
    pads = resolve_padding(padding, spatial, kernel, stride, dilation, op=op)
    out = pool_output_size(spatial, kernel, stride, pads, dilation, ceil_mode, op=op)
    ext = tuple(
        (lo, hi + max(0, (o - 1) * s + d * (k - 1) + 1 - (n + lo + hi)))
        for n, (lo, hi), o, s, d, k in zip(spatial, pads, out, stride, dilation, kernel)
    )
    full = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, ext))
    _config.check_budget(op, "padded input", (*x.shape[:2], *full), x.dtype)
    _config.check_budget(op, "output", (*x.shape[:2], *out), x.dtype)
    return x, batched, _PoolGeometry(tuple(x.shape), out, pads, ext, kernel, stride, dilation)


def _plan(geo: _PoolGeometry):
    """The window plan of the padded input (see :mod:`convlayer.engine.windows`)."""
    full = tuple(n + lo + hi for n, (lo, hi) in zip(geo.in_shape[2:], geo.ext))
    return make_plan(full, geo.kernel, geo.stride, geo.dilation, geo.out)


def _direct():
    from ..engine import direct  # compiled on first use

    return direct


def _padded(x, geo: _PoolGeometry, fill: float) -> np.ndarray:
    return _pad(x, geo.axes, geo.ext, ("zeros",) * len(geo.axes), fill)  # (N, C, *P); x itself if no padding


def _unpad(gxp, geo: _PoolGeometry) -> np.ndarray:
    inner = tuple(slice(lo, lo + n) for n, (lo, _) in zip(geo.in_shape[2:], geo.ext))
    return np.ascontiguousarray(gxp[(slice(None), slice(None), *inner)])  # (N, C, *S)


# --- max pooling ------------------------------------------------------------------------------


def _window_max(xp, geo: _PoolGeometry) -> np.ndarray:
    acc = None
    for _, view in geo.taps():
        if acc is None:
            acc = xp[view].copy()
        else:
            np.maximum(acc, xp[view], out=acc)  # propagates NaN
    return acc  # (N, C, *O)


def _first_hits(xp, y, geo: _PoolGeometry):
    """Yield ``(tap, view, hit)``: where each tap holds its window's maximum ``y``, first tap only (NaN wins)."""
    remaining = np.ones(y.shape, dtype=bool)
    y_nan = np.isnan(y)
    any_nan = bool(y_nan.any())
    for t, view in geo.taps():
        v = xp[view]
        hit = v == y
        if any_nan:
            hit |= y_nan & np.isnan(v)
        hit &= remaining
        remaining ^= hit
        yield t, view, hit


def _window_argmax(xp, y, geo: _PoolGeometry) -> np.ndarray:
    """The first tap holding each window's maximum ``y``; -1 where none does (never, for real inputs)."""
    arg = np.full(y.shape, -1, dtype=np.int32)
    for t, _, hit in _first_hits(xp, y, geo):
        arg[hit] = t
    return arg


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
             data_format="channels_first"):
    """N-d max pooling.

    Parameters
    ----------
    x : ndarray ``(N, C, *S)`` (or unbatched, or channels-last)
    kernel_size : int or tuple
    stride : int or tuple, optional
        Defaults to ``kernel_size``.
    padding : int, str or sequence
        As for :func:`convlayer.functional.conv`; padded positions never win.
    dilation : int or tuple
    ceil_mode : bool
        Round the output size up (keep a last partial window).
    return_indices : bool
        Also return, per output, the flat index of the maximum within its
        ``(n, c)`` plane of the input (PyTorch's convention); ``-1`` for a
        window that lies wholly in the padding. Among tied maxima the first
        in the window wins, and a NaN beats any number; among several NaN
        the first wins too (PyTorch takes the last). The backward sends each
        gradient to this same element.

    Returns
    -------
    ndarray ``(N, C, *O)`` and, with ``return_indices``, an int64 array of
    the same shape. ``O = floor_or_ceil((S + lo + hi - d*(k-1) - 1)/s) + 1``.

    Examples
    --------
    >>> max_pool(np.zeros((1, 6, 28, 28)), 2).shape
    (1, 6, 14, 14)
    """
    op = "max_pool"
    x, batched, geo = _setup(op, x, kernel_size, stride, padding, dilation, ceil_mode, data_format)
    return_indices = check_bool(op, "return_indices", return_indices)
    xp = _padded(x, geo, -np.inf)
    y = _window_max(xp, geo)
    out = from_channels_first(y, batched, data_format)
    if not return_indices:
        return out
    idx = _flat_indices(_window_argmax(xp, y, geo), geo)
    return out, from_channels_first(idx, batched, data_format)


def _flat_indices(arg, geo: _PoolGeometry) -> np.ndarray:
    """Flat index into each input plane of the winning tap ``arg (N, C, *O)``; -1 if it lies in padding."""
    taps = np.array(list(np.ndindex(*geo.kernel)), dtype=np.int64).reshape(-1, len(geo.kernel))
    flat = np.zeros(arg.shape, dtype=np.int64)
    inside = arg >= 0
    for i, (n, (lo, _), s, d) in enumerate(zip(geo.in_shape[2:], geo.pads, geo.stride, geo.dilation)):
        shape = [1] * arg.ndim
        shape[2 + i] = -1
        o = np.arange(geo.out[i]).reshape(shape)
        pos = o * s + taps[np.maximum(arg, 0), i] * d - lo
        inside &= (pos >= 0) & (pos < n)
        flat = flat * n + pos
    return np.where(inside, flat, -1)


def max_pool_backward(grad_y, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                      data_format="channels_first"):
    """Gradient of :func:`max_pool` w.r.t. ``x``: each output's gradient goes to its (first) maximum."""
    op = "max_pool_backward"
    x, batched, geo = _setup(op, x, kernel_size, stride, padding, dilation, ceil_mode, data_format)
    gy = as_float_array(op, "grad_y", grad_y)
    gy, _ = to_channels_first(op, gy, len(geo.kernel), data_format, name="grad_y")
    check_grad_shape(op, gy, geo.out_shape)
    gy = gy.astype(x.dtype, copy=False)
    gx = _direct().max_pool_backward(x, gy, _plan(geo), geo.ext, np.empty(x.shape, dtype=x.dtype))
    return from_channels_first(gx, batched, data_format)


# --- average pooling --------------------------------------------------------------------------


def _divisor(geo: _PoolGeometry, count_include_pad: bool, dtype) -> np.ndarray:
    """Number of counted window positions per output ``(*O)`` (separable over axes)."""
    div = np.ones((), dtype=dtype)
    for n, (lo, hi), k, s, d, o in zip(geo.in_shape[2:], geo.pads, geo.kernel, geo.stride, geo.dilation, geo.out):
        pos = np.arange(o)[:, None] * s + np.arange(k)[None, :] * d - lo  # (O_i, k_i)
        low, high = (-lo, n + hi) if count_include_pad else (0, n)
        count = ((pos >= low) & (pos < high)).sum(axis=1).astype(dtype)
        div = np.multiply.outer(div, np.maximum(count, 1))
    return div


def avg_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True,
             data_format="channels_first"):
    """N-d average pooling.

    Parameters as :func:`max_pool`, plus ``count_include_pad``: whether
    zero padding counts in the divisor (positions past the padding that
    ``ceil_mode`` adds never count).

    Examples
    --------
    >>> avg_pool(np.ones((1, 1, 5, 5)), 2, ceil_mode=True)[0, 0].tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    op = "avg_pool"
    x, batched, geo = _setup(op, x, kernel_size, stride, padding, dilation, ceil_mode, data_format)
    count_include_pad = check_bool(op, "count_include_pad", count_include_pad)
    xp = _padded(x, geo, 0.0)
    acc = np.zeros(geo.out_shape, dtype=x.dtype)
    for _, view in geo.taps():
        acc += xp[view]
    acc /= _divisor(geo, count_include_pad, x.dtype)
    return from_channels_first(acc, batched, data_format)


def avg_pool_backward(grad_y, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                      count_include_pad=True, data_format="channels_first"):
    """Gradient of :func:`avg_pool` w.r.t. ``x``."""
    op = "avg_pool_backward"
    x, batched, geo = _setup(op, x, kernel_size, stride, padding, dilation, ceil_mode, data_format)
    count_include_pad = check_bool(op, "count_include_pad", count_include_pad)
    gy = as_float_array(op, "grad_y", grad_y)
    gy, _ = to_channels_first(op, gy, len(geo.kernel), data_format, name="grad_y")
    check_grad_shape(op, gy, geo.out_shape)
    scaled = (gy / _divisor(geo, count_include_pad, x.dtype)).astype(x.dtype, copy=False)
    full = tuple(n + lo + hi for n, (lo, hi) in zip(geo.in_shape[2:], geo.ext))
    gxp = np.zeros((*geo.in_shape[:2], *full), dtype=x.dtype)
    for _, view in geo.taps():
        gxp[view] += scaled
    return from_channels_first(_unpad(gxp, geo), batched, data_format)


# --- global pooling ---------------------------------------------------------------------------


def _global_setup(op, x, data_format):
    x = as_float_array(op, "input", x)
    if x.ndim < 3:
        raise ValueError(f"{op}: input of shape {x.shape} must be (N, C, *spatial) with at least one spatial axis")
    x, _ = to_channels_first(op, x, x.ndim - 2, data_format)
    if any(s == 0 for s in x.shape[2:]):
        raise ValueError(f"{op}: input of shape {x.shape} has an empty spatial axis; nothing to pool")
    return x


def _global_out(y, x, keepdims, data_format):
    """``y (N, C)`` to ``(N, C)`` or, with keepdims, ``(N, C, 1, ...)`` in the input's layout."""
    if not keepdims:
        return y
    y = y.reshape(*y.shape, *([1] * (x.ndim - 2)))
    return from_channels_first(y, True, data_format)


def _global_grad(op, grad_y, x):
    """``grad_y`` of a global pool (with or without keepdims) as ``(N, C)``."""
    gy = as_float_array(op, "grad_y", grad_y)
    if gy.size != x.shape[0] * x.shape[1]:
        raise ValueError(f"{op}: grad_y must hold one value per (n, c) {x.shape[:2]}, got shape {gy.shape}")
    return gy.reshape(x.shape[0], x.shape[1])


def global_max_pool(x, keepdims=False, data_format="channels_first"):
    """Maximum over all spatial axes: ``(N, C)`` (or ``(N, C, 1, ...)`` with ``keepdims``)."""
    x = _global_setup("global_max_pool", x, data_format)
    return _global_out(x.reshape(*x.shape[:2], math.prod(x.shape[2:])).max(axis=-1), x, keepdims, data_format)


def global_max_pool_backward(grad_y, x, keepdims=False, data_format="channels_first"):
    """Gradient of :func:`global_max_pool`: to the first maximum of each plane."""
    op = "global_max_pool_backward"
    x = _global_setup(op, x, data_format)
    gy = _global_grad(op, grad_y, x)
    flat = x.reshape(*x.shape[:2], math.prod(x.shape[2:]))
    nan_any = np.isnan(flat)
    arg = np.where(nan_any.any(axis=-1), nan_any.argmax(axis=-1), flat.argmax(axis=-1))
    g = np.zeros_like(flat)
    np.put_along_axis(g, arg[..., None], gy[..., None], axis=-1)
    return from_channels_first(g.reshape(x.shape), True, data_format)


def global_avg_pool(x, keepdims=False, data_format="channels_first"):
    """Mean over all spatial axes: ``(N, C)`` (or ``(N, C, 1, ...)`` with ``keepdims``)."""
    x = _global_setup("global_avg_pool", x, data_format)
    return _global_out(x.reshape(*x.shape[:2], math.prod(x.shape[2:])).mean(axis=-1), x, keepdims, data_format)


def global_avg_pool_backward(grad_y, x, keepdims=False, data_format="channels_first"):
    """Gradient of :func:`global_avg_pool`."""
    op = "global_avg_pool_backward"
    x = _global_setup(op, x, data_format)
    gy = _global_grad(op, grad_y, x).reshape(*x.shape[:2], *([1] * (x.ndim - 2)))
    count = int(np.prod(x.shape[2:]))
    g = np.broadcast_to(gy / count, x.shape).astype(x.dtype)
    return from_channels_first(g, True, data_format)
