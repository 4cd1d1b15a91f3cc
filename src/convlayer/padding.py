"""Padding of the spatial axes and its exact adjoint.

One vocabulary of mode names, with every alias in ONE table
(:data:`MODE_ALIASES`). With input ``a b c d``::

    zeros      0 0 0 | a b c d | 0 0 0      (alias "constant", fill = value)
    reflect    d c b | a b c d | c b a      (edge not repeated; NumPy "reflect")
    symmetric  c b a | a b c d | d c b      (edge repeated; NumPy "symmetric")
    circular   b c d | a b c d | a b c      (alias "wrap")
    replicate  a a a | a b c d | d d d      (aliases "edge", "nearest")

Pads larger than the input repeat the rule, as ``numpy.pad`` does. An
empty axis can only be padded with ``zeros``.

The adjoint (:func:`pad_adjoint`) folds a gradient on the padded array back
onto the input: every padded position adds into the input element it was
copied from; constant positions are dropped.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _config
from .geometry import _is_int, check_real, resolve_padding

__all__ = ["MODES", "MODE_ALIASES", "normalize_mode", "source_index", "pad", "pad_adjoint"]

MODES = ("zeros", "reflect", "symmetric", "circular", "replicate")

MODE_ALIASES = {
    "zeros": "zeros",
    "constant": "zeros",
    "reflect": "reflect",
    "symmetric": "symmetric",
    "circular": "circular",
    "wrap": "circular",
    "replicate": "replicate",
    "edge": "replicate",
    "nearest": "replicate",
}

Pair = tuple[int, int]


def normalize_mode(mode, n: int, *, op: str = "pad", name: str = "padding_mode") -> tuple[str, ...]:
    """Canonical mode name per axis from one name or one name per axis."""
    names = [mode] * n if isinstance(mode, str) else mode
    if not isinstance(names, (tuple, list)) or len(names) != n:
        raise ValueError(
            f"{op}: {name}={mode!r} must be a mode name or a sequence of {n} mode names (one per spatial axis)"
        )
    out = []
    for m in names:
        if not isinstance(m, str) or m not in MODE_ALIASES:
            raise ValueError(f"{op}: {name}={m!r} is not one of {sorted(MODE_ALIASES)}")
        out.append(MODE_ALIASES[m])
    return tuple(out)


def source_index(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Input index each padded position copies from (``-1`` for a constant position).

    >>> source_index(4, 3, 3, "reflect").tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    >>> source_index(4, 3, 3, "symmetric").tolist()
    [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]
    """
    i = np.arange(-lo, n + hi, dtype=np.int64)
    if mode == "zeros":
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    if mode == "circular":
        return np.mod(i, n)
    if mode == "symmetric":
        j = np.mod(i, 2 * n)
        return np.where(j < n, j, 2 * n - 1 - j)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(i)
        period = 2 * (n - 1)
        j = np.mod(i, period)
        return np.where(j < n, j, period - j)
    raise ValueError(f"unknown padding mode {mode!r}")


def _spatial_axes(ndim: int, axes, op: str) -> tuple[int, ...]:
    if axes is None:
        if ndim < 3:
            raise ValueError(
                f"{op}: input with {ndim} dims has no spatial axes in (N, C, *spatial) layout; "
                f"pass axes= to choose the axes to pad"
            )
        return tuple(range(2, ndim))
    axes = (axes,) if _is_int(axes) else tuple(axes)
    if not all(_is_int(a) for a in axes) or any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"{op}: axes={axes!r} out of range for an input with {ndim} dims")
    axes = tuple(int(a) % ndim for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: axes={axes!r} repeats an axis")
    return axes


def _validate_pairs_for_modes(shape, axes, pairs, modes, op):
    for ax, (lo, hi), mode in zip(axes, pairs, modes):
        if mode != "zeros" and shape[ax] == 0 and (lo or hi):
            raise ValueError(
                f"{op}: cannot pad an empty axis (axis {ax} has size 0) with mode {mode!r}; only 'zeros' can"
            )


def _pad(x: np.ndarray, axes, pairs, modes, value=0.0) -> np.ndarray:
    """Pad resolved ``pairs`` on ``axes`` with canonical ``modes`` (no checks)."""
    if all(lo == 0 and hi == 0 for lo, hi in pairs):
        return x
    shape = list(x.shape)
    for ax, (lo, hi) in zip(axes, pairs):
        shape[ax] += lo + hi
    if all(m == "zeros" for m in modes):
        out = np.full(shape, value, dtype=x.dtype) if value else np.zeros(shape, dtype=x.dtype)
        out[tuple(_interior(x.ndim, axes, pairs, x.shape))] = x
        return out
    out = np.empty(shape, dtype=x.dtype)
    index = _interior(x.ndim, axes, pairs, x.shape)
    out[tuple(index)] = x
    # Fill axis by axis. Axes already done are taken whole, later axes only
    # on their interior, so corners come out as numpy.pad makes them.
    for ax, (lo, hi), mode in zip(axes, pairs, modes):
        n = x.shape[ax]
        whole = list(index)
        whole[ax] = slice(None)
        src = source_index(n, lo, hi, mode) + lo
        for region in (slice(0, lo), slice(lo + n, lo + n + hi)):
            if region.stop == region.start:
                continue
            dst = list(index)
            dst[ax] = region
            if mode == "zeros":
                out[tuple(dst)] = value
            else:
                out[tuple(dst)] = np.take(out[tuple(whole)], src[region], axis=ax)
        index[ax] = slice(None)
    return out


def _interior(ndim, axes, pairs, in_shape):
    index = [slice(None)] * ndim
    for ax, (lo, _) in zip(axes, pairs):
        index[ax] = slice(lo, lo + in_shape[ax])
    return index


def _pad_adjoint(g: np.ndarray, axes, pairs, modes, in_shape) -> np.ndarray:
    """Adjoint of :func:`_pad`: fold ``g`` (padded shape) back onto ``in_shape``."""
    if all(lo == 0 and hi == 0 for lo, hi in pairs):
        return g
    if all(m == "zeros" for m in modes):
        return g[tuple(_interior(g.ndim, axes, pairs, in_shape))].copy()
    out = g
    for ax, (lo, hi), mode in reversed(list(zip(axes, pairs, modes))):
        n = in_shape[ax]
        core = [slice(None)] * g.ndim
        core[ax] = slice(lo, lo + n)
        folded = out[tuple(core)].copy()
        if mode != "zeros" and (lo or hi):
            src = source_index(n, lo, hi, mode)
            border = np.concatenate([np.arange(lo), np.arange(lo + n, lo + n + hi)])
            moved = np.moveaxis(folded, ax, 0)
            np.add.at(moved, src[border], np.moveaxis(np.take(out, border, axis=ax), ax, 0))
        out = folded
    return out


def pad(x, padding, mode="zeros", value: float = 0.0, *, axes=None) -> np.ndarray:
    """Pad the spatial axes of ``x``.

    Parameters
    ----------
    x : ndarray
        Input; by default laid out ``(N, C, *spatial)`` and only the spatial
        axes are padded.
    padding : int or sequence
        An int (both sides of every padded axis), one int per axis, or one
        ``(lo, hi)`` pair per axis. Must be >= 0.
    mode : str or sequence of str
        ``"zeros"`` (``"constant"``), ``"reflect"``, ``"symmetric"``,
        ``"circular"`` (``"wrap"``), ``"replicate"`` (``"edge"``,
        ``"nearest"``); one for all axes or one per axis.
    value : float
        Fill value of ``"zeros"``/``"constant"`` positions (any real number, inf and NaN included).
    axes : int or sequence of int, optional
        Axes to pad instead of the spatial axes ``2..ndim-1``.

    Returns
    -------
    ndarray, a new array (or ``x`` itself when nothing is padded).

    Examples
    --------
    >>> pad(np.arange(1.0, 5.0), 3, "reflect", axes=0).tolist()
    [4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0]
    >>> pad(np.arange(1.0, 5.0), (1, 2), "circular", axes=0).tolist()
    [4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0]
    """
    x = np.asarray(x)
    value = check_real("pad", "value", value, finite=False)
    axes = _spatial_axes(x.ndim, axes, "pad")
    if isinstance(padding, str):
        raise TypeError(
            "pad: padding must be an int, one int per axis or (lo, hi) pairs; strings such as 'same' "
            "depend on the kernel and belong to conv/pooling"
        )
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and len(axes) == 1 and all(_is_int(p) for p in padding):
        padding = (tuple(padding),)
    sizes = [x.shape[a] for a in axes]
    pairs = resolve_padding(padding, sizes, [1] * len(axes), op="pad")
    modes = normalize_mode(mode, len(axes), op="pad", name="mode")
    _validate_pairs_for_modes(x.shape, axes, pairs, modes, "pad")
    out_shape = list(x.shape)
    for a, (lo, hi) in zip(axes, pairs):
        out_shape[a] += lo + hi
    _config.check_budget("pad", "padded output", out_shape, x.dtype)
    return _pad(x, axes, pairs, modes, value)


def pad_adjoint(grad, padding, mode="zeros", *, in_shape: Sequence[int], axes=None) -> np.ndarray:
    """Exact adjoint of :func:`pad`: the gradient with respect to ``pad``'s input.

    Parameters
    ----------
    grad : ndarray
        Gradient with respect to the padded array.
    padding, mode, axes
        As given to :func:`pad`.
    in_shape : sequence of int
        Shape of the unpadded input.

    Examples
    --------
    >>> pad_adjoint(np.ones(7), (1, 2), "replicate", in_shape=(4,), axes=0).tolist()
    [2.0, 1.0, 1.0, 3.0]
    """
    grad = np.asarray(grad)
    in_shape = tuple(int(v) for v in in_shape)
    axes = _spatial_axes(grad.ndim, axes, "pad_adjoint")
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and len(axes) == 1 and all(_is_int(p) for p in padding):
        padding = (tuple(padding),)
    pairs = resolve_padding(padding, [in_shape[a] for a in axes], [1] * len(axes), op="pad_adjoint")
    modes = normalize_mode(mode, len(axes), op="pad_adjoint", name="mode")
    expected = list(in_shape)
    for a, (lo, hi) in zip(axes, pairs):
        expected[a] += lo + hi
    if tuple(expected) != grad.shape:
        raise ValueError(
            f"pad_adjoint: grad shape {grad.shape} does not match in_shape {in_shape} padded by {pairs} "
            f"(expected {tuple(expected)})"
        )
    _validate_pairs_for_modes(in_shape, axes, pairs, modes, "pad_adjoint")
    return _pad_adjoint(grad, axes, pairs, modes, in_shape)
