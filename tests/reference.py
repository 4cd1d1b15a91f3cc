"""Naive float64 reference implementations, used ONLY as test oracles.

Written straight from the formulas of DESIGN.md section 1, with
``numpy.pad`` for the padding modes and plain loops over kernel taps
(shift-and-add); nothing here shares code with convlayer's engine.
"""

from __future__ import annotations

import itertools

import numpy as np

NUMPY_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "symmetric": "symmetric",
    "circular": "wrap",
    "replicate": "edge",
}


def pad(x, pads, modes, value=0.0):
    """Pad the spatial axes of ``x (N, C, *S)``: ``pads`` (lo, hi) pairs, one mode per axis, ``value`` in the
    ``"zeros"`` (constant) axes' padding."""
    for i, ((lo, hi), mode) in enumerate(zip(pads, modes)):
        width = [(0, 0)] * x.ndim
        width[2 + i] = (lo, hi)
        extra = {"constant_values": value} if mode == "zeros" else {}
        x = np.pad(x, width, mode=NUMPY_MODE[mode], **extra)
    return x


def pad_adjoint(g, in_shape, pads, modes):
    """Adjoint of :func:`pad`, built from numpy.pad applied to index arrays."""
    for i in reversed(range(len(pads))):
        lo, hi = pads[i]
        n = in_shape[2 + i]
        src = np.pad(np.arange(n), (lo, hi), mode=NUMPY_MODE[modes[i]]) if n else np.zeros(lo + hi, int)
        keep = np.ones(lo + n + hi, bool)
        if modes[i] == "zeros":
            keep[:lo] = False
            keep[lo + n:] = False
        moved = np.moveaxis(g, 2 + i, 0)
        out = np.zeros((n, *moved.shape[1:]))
        np.add.at(out, src[keep], moved[keep])
        g = np.moveaxis(out, 0, 2 + i)
    return g


def conv(x, w, b, stride, pads, dilation, groups, modes, value=0.0):
    """``y[n,k,o] = b[k] + sum_{c,m} xpad[n, g*Cg + c, o*s + m*d] * w[k, c, m]``."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    xp = pad(x, pads, modes, value)
    n, c = x.shape[:2]
    k, cg = w.shape[:2]
    kernel = w.shape[2:]
    out = [(p - d * (kk - 1) - 1) // s + 1 for p, kk, s, d in zip(xp.shape[2:], kernel, stride, dilation)]
    y = np.zeros((n, k, *out))
    kg = k // groups
    for m in itertools.product(*(range(v) for v in kernel)):
        window = tuple(slice(mi * d, mi * d + (o - 1) * s + 1, s) for mi, d, o, s in zip(m, dilation, out, stride))
        for g in range(groups):
            xs = xp[(slice(None), slice(g * cg, (g + 1) * cg), *window)]  # (N, Cg, *O)
            ws = w[(slice(g * kg, (g + 1) * kg), slice(None), *m)]  # (Kg, Cg)
            y[:, g * kg:(g + 1) * kg] += np.einsum("nc...,kc->nk...", xs, ws)
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, -1, *([1] * len(kernel)))
    return y


def conv_transpose(x, w, b, stride, pads, dilation, groups, modes, out_size):
    """Scatter form: ``ypad[n, g*Cog + j, i*s + m*d] += x[n, c, i] * w[c, j, m]``, then the pad adjoint."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, cin = x.shape[:2]
    cog = w.shape[1]
    kernel = w.shape[2:]
    cout = cog * groups
    padded = [o + lo + hi for o, (lo, hi) in zip(out_size, pads)]
    full = [max(p, (i - 1) * s + d * (kk - 1) + 1) for p, i, s, d, kk in zip(padded, x.shape[2:], stride, dilation, kernel)]
    yp = np.zeros((n, cout, *full))
    cig = cin // groups
    for m in itertools.product(*(range(v) for v in kernel)):
        window = tuple(slice(mi * d, mi * d + (i - 1) * s + 1, s) for mi, d, i, s in zip(m, dilation, x.shape[2:], stride))
        for g in range(groups):
            xs = x[:, g * cig:(g + 1) * cig]  # (N, Cig, *I)
            ws = w[(slice(g * cig, (g + 1) * cig), slice(None), *m)]  # (Cig, Cog)
            yp[(slice(None), slice(g * cog, (g + 1) * cog), *window)] += np.einsum("nc...,cj->nj...", xs, ws)
    yp = yp[(slice(None), slice(None), *(slice(0, p) for p in padded))]
    y = pad_adjoint(yp, (n, cout, *out_size), pads, modes)
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape(1, -1, *([1] * len(kernel)))
    return y


def _windows(xp, kernel, stride, dilation, out):
    """Tap views ``xp[..., o*s + m*d]`` of a padded array, zero-extended at the end where needed."""
    extra = [max(0, (o - 1) * s + d * (kk - 1) + 1 - n) for n, kk, s, d, o in zip(xp.shape[2:], kernel, stride, dilation, out)]
    xp = np.pad(xp, [(0, 0), (0, 0)] + [(0, e) for e in extra])
    for m in itertools.product(*(range(v) for v in kernel)):
        window = tuple(slice(mi * d, mi * d + (o - 1) * s + 1, s) for mi, d, o, s in zip(m, dilation, out, stride))
        yield xp[(slice(None), slice(None), *window)]


def pool_out(in_sizes, kernel, stride, pads, dilation, ceil_mode):
    out = []
    for n, kk, s, (lo, hi), d in zip(in_sizes, kernel, stride, pads, dilation):
        span = d * (kk - 1) + 1
        if ceil_mode:
            o = -(-(n + lo + hi - span) // s) + 1
            if (o - 1) * s >= n + lo:
                o -= 1
        else:
            o = (n + lo + hi - span) // s + 1
        out.append(o)
    return out


def max_pool(x, kernel, stride, pads, dilation, ceil_mode):
    out = pool_out(x.shape[2:], kernel, stride, pads, dilation, ceil_mode)
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0)] + list(pads), constant_values=-np.inf)
    # The ceil-mode tail is zero-filled by _windows; mask it to -inf.
    valid = np.pad(np.ones(xp.shape[2:], bool), [(0, 0)] * len(pads))[None, None]
    taps = [np.where(v, w, -np.inf) for w, v in zip(_windows(xp, kernel, stride, dilation, out),
                                                   _windows(valid.astype(float), kernel, stride, dilation, out))]
    return np.max(np.stack(taps), axis=0)


def avg_pool(x, kernel, stride, pads, dilation, ceil_mode, count_include_pad):
    out = pool_out(x.shape[2:], kernel, stride, pads, dilation, ceil_mode)
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0)] + list(pads))
    total = sum(_windows(xp, kernel, stride, dilation, out))
    if count_include_pad:
        mask = np.ones((1, 1, *xp.shape[2:]))
    else:
        mask = np.pad(np.ones((1, 1, *x.shape[2:])), [(0, 0), (0, 0)] + list(pads))
    count = sum(_windows(mask, kernel, stride, dilation, out))
    return total / np.maximum(count, 1)
