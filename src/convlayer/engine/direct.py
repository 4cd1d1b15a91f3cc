"""Direct compiled kernels (Numba) for depthwise, grouped and few-channel convolutions.

When every output channel sums over only a few input channels (``C_g``)
and each group has few outputs (``K_g``), a GEMM is all overhead: its
inner dimension ``C_g * taps`` is tiny and the patch matrix costs ``taps``
copies of the input. These kernels instead run, for each (image, output
channel), over the tap slices of the phase-split input (see
:mod:`.windows`) and accumulate into a row of ``L`` outputs that stays in
cache; the innermost loop is contiguous, so LLVM vectorises it. The
accumulators are arrays local to the kernel and the inputs are sliced
before the loop: LLVM then knows they do not alias, which is what lets it
vectorise (about 9x faster than indexing the output in place).

Kernels assume valid, contiguous, same-dtype input (the wrappers in
:mod:`.gemm` guarantee it) and never check arguments. They are compiled
once per dtype and cached on disk (``cache=True``). Reductions use the
``reassoc``/``contract`` fast-math flags only, so NaN and infinity keep
IEEE semantics.
"""

from __future__ import annotations

import types
from functools import lru_cache

import numpy as np
from numba import njit, prange

from .windows import lattice_mask

_FLAGS = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"})

# Work (multiply-adds) above which the parallel kernels are used. Below it
# the serial ones win: right after a BLAS call OpenBLAS's idle workers keep
# spinning for ~0.1 s and starve Numba's threads (measured on LeNet-5's
# first layer: 8.6 ms parallel vs 1.6 ms serial inside a training step).
PARALLEL_MIN_WORK = 20_000_000


def _forward(xph, w, taps_r, taps_off, groups, valid, length, out):  # pragma: no cover - compiled
    """``out[b, k, j] = sum_{c, t} w[k, c, t] * xph[b, g(k)*C_g + c, r_t, off_t + valid[j]]``.

    xph (n, C, R, Q), w (K, C_g, T), valid (P,) lattice positions of the
    outputs, out (n, K, P): the row of ``length`` positions is computed in a
    local buffer and only the real outputs are written.
    """
    n = xph.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    for job in prange(n * k_total):
        b = job // k_total
        k = job % k_total
        g = k // k_g
        acc = np.zeros(length, dtype=out.dtype)
        for c in range(c_g):
            ci = g * c_g + c
            for t in range(n_taps):
                wv = w[k, c, t]
                o = taps_off[t]
                src = xph[b, ci, taps_r[t], o:o + length]
                for i in range(length):
                    acc[i] += wv * src[i]
        row = out[b, k]
        for j in range(valid.shape[0]):
            row[j] = acc[valid[j]]


def _grad_input(gy, w, taps_r, taps_off, groups, valid, length, out):  # pragma: no cover - compiled
    """Adjoint of :func:`forward` in ``xph``: ``gy (n, K, P)`` to ``out (n, C, R, Q)`` (overwritten)."""
    n = gy.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    c_total, phases, q = out.shape[1], out.shape[2], out.shape[3]
    for job in prange(n * c_total):
        b = job // c_total
        ci = job % c_total
        g = ci // c_g
        c = ci % c_g
        acc = np.zeros((phases, q), dtype=out.dtype)
        src = np.zeros(length, dtype=out.dtype)
        for k in range(g * k_g, (g + 1) * k_g):
            row = gy[b, k]
            for j in range(valid.shape[0]):
                src[valid[j]] = row[j]
            for t in range(n_taps):
                wv = w[k, c, t]
                o = taps_off[t]
                dst = acc[taps_r[t], o:o + length]
                for i in range(length):
                    dst[i] += wv * src[i]
        out[b, ci] = acc


def _grad_weight(gy, xph, taps_r, taps_off, groups, valid, length, out):  # pragma: no cover - compiled
    """Adjoint of :func:`forward` in ``w``: ``gy (n, K, P)`` and ``xph`` to ``out (K, C_g, T)``."""
    n = gy.shape[0]
    k_total, c_g, n_taps = out.shape
    k_g = k_total // groups
    for job in prange(k_total * c_g):
        k = job // c_g
        c = job % c_g
        ci = (k // k_g) * c_g + c
        part = np.zeros((n_taps, length), dtype=out.dtype)  # per-lane partial sums: vectorises
        gr = np.zeros(length, dtype=out.dtype)
        for b in range(n):
            row = gy[b, k]
            for j in range(valid.shape[0]):
                gr[valid[j]] = row[j]
            for t in range(n_taps):
                o = taps_off[t]
                src = xph[b, ci, taps_r[t], o:o + length]
                p = part[t]
                for i in range(length):
                    p[i] += gr[i] * src[i]
        for t in range(n_taps):
            out[k, c, t] = part[t].sum()


def _compile(fn, parallel: bool):
    """A Numba dispatcher for ``fn``; each variant gets its own qualname, hence its own on-disk cache entry."""
    variant = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    variant.__qualname__ = f"{fn.__qualname__}_{'parallel' if parallel else 'serial'}"
    return njit(parallel=parallel, **_FLAGS)(variant)


_KERNELS = {
    name: (_compile(fn, False), _compile(fn, True))
    for name, fn in (("forward", _forward), ("grad_input", _grad_input), ("grad_weight", _grad_weight))
}


def kernel(name: str, work: int):
    """The serial or parallel compiled kernel ``name`` for ``work`` multiply-adds."""
    return _KERNELS[name][work >= PARALLEL_MIN_WORK]


@lru_cache(maxsize=256)
def plan_arrays(plan):
    """``(taps_r, taps_off, valid, length)`` of a plan, as the kernels take them (cached; never mutated)."""
    taps = np.asarray(plan.taps, dtype=np.int64).reshape(-1, 2)
    valid = np.flatnonzero(lattice_mask(plan)).astype(np.int64)
    return np.ascontiguousarray(taps[:, 0]), np.ascontiguousarray(taps[:, 1]), valid, plan.length


def _gather(xph, taps_r, taps_off, out):  # pragma: no cover - compiled
    """Patch matrix ``out (C, T, n, L)`` from phases ``xph (n, C, R, Q)``: ``out[:, t] = xph[:, :, r_t, off_t : off_t + L]``.

    The batch sits next to the positions, so ``out.reshape(C*T, n*L)`` is the
    right-hand side of ONE GEMM for a whole chunk.
    """
    c_total, n_taps, n, length = out.shape
    for job in prange(c_total * n_taps):
        c = job // n_taps
        t = job % n_taps
        r = taps_r[t]
        o = taps_off[t]
        for b in range(n):
            out[c, t, b, :] = xph[b, c, r, o:o + length]


_GATHER = (_compile(_gather, False), _compile(_gather, True))


def gather(xph, plan, out):
    """Compiled patch matrix ``(C, T, n, L)`` (see :func:`_gather`; a memory-bound copy, threaded when large)."""
    taps_r, taps_off, _, _ = plan_arrays(plan)
    _GATHER[out.nbytes >= PARALLEL_MIN_WORK](xph, taps_r, taps_off, out)
    return out


def _gather_outputs(xph, taps_r, taps_off, rows, width, out):  # pragma: no cover - compiled
    """``out (n, C, T, P)``: for each tap, the input under every real output, row by row.

    ``rows`` are the lattice positions where the output rows (runs of
    ``width`` consecutive outputs along the last axis) start: each row is
    one contiguous slice, so the copy vectorises. This is the patch matrix
    of the real outputs only (no dropped columns), one image after another,
    as the forward GEMM wants it.
    """
    n, c_total, n_taps, count = out.shape
    for job in prange(n * c_total):
        b = job // c_total
        c = job % c_total
        for t in range(n_taps):
            src = xph[b, c, taps_r[t]]
            o = taps_off[t]
            dst = out[b, c, t]
            for r in range(rows.shape[0]):
                start = o + rows[r]
                dst[r * width:(r + 1) * width] = src[start:start + width]


_GATHER_OUTPUTS = (_compile(_gather_outputs, False), _compile(_gather_outputs, True))


def gather_outputs(xph, plan, out):
    """Compiled patch matrix ``(n, C, T, P)`` over the real output positions (see :func:`_gather_outputs`)."""
    taps_r, taps_off, _, _ = plan_arrays(plan)
    _GATHER_OUTPUTS[out.nbytes >= PARALLEL_MIN_WORK](xph, taps_r, taps_off, _output_rows(plan), plan.out[-1], out)
    return out


@lru_cache(maxsize=256)
def _output_rows(plan):
    """Lattice positions where the rows of real outputs (runs along the last axis) start."""
    return np.ascontiguousarray(plan_arrays(plan)[2][::plan.out[-1]])


# --- strided variants: read the padded input in place (no phase split) -----------------------------
#
# With a stride, splitting the input into phases costs a strided copy of the whole input, several times
# the kernel's own work for depthwise layers. These variants index the padded input ``(n, C, P)``
# directly: output row ``r`` starts at flat offset ``rows[r]`` and advances ``step`` (the last stride)
# per output; tap ``t`` adds ``tap_off[t]``.


def _forward_strided(xp, w, tap_off, rows, width, step, groups, out):  # pragma: no cover - compiled
    n = xp.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    count = rows.shape[0] * width
    for job in prange(n * k_total):
        b = job // k_total
        k = job % k_total
        g = k // k_g
        acc = np.zeros(count, dtype=out.dtype)
        for c in range(c_g):
            src = xp[b, g * c_g + c]
            for t in range(n_taps):
                wv = w[k, c, t]
                o = tap_off[t]
                for r in range(rows.shape[0]):
                    base = o + rows[r]
                    for i in range(width):
                        acc[r * width + i] += wv * src[base + i * step]
        out[b, k, :] = acc


def _grad_input_strided(gy, w, tap_off, rows, width, step, groups, out):  # pragma: no cover - compiled
    n = gy.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    c_total, size = out.shape[1], out.shape[2]
    for job in prange(n * c_total):
        b = job // c_total
        ci = job % c_total
        g = ci // c_g
        c = ci % c_g
        acc = np.zeros(size, dtype=out.dtype)
        for k in range(g * k_g, (g + 1) * k_g):
            row = gy[b, k]
            for t in range(n_taps):
                wv = w[k, c, t]
                o = tap_off[t]
                for r in range(rows.shape[0]):
                    base = o + rows[r]
                    for i in range(width):
                        acc[base + i * step] += wv * row[r * width + i]
        out[b, ci, :] = acc


def _grad_weight_strided(gy, xp, tap_off, rows, width, step, groups, out):  # pragma: no cover - compiled
    n = gy.shape[0]
    k_total, c_g, n_taps = out.shape
    k_g = k_total // groups
    for job in prange(k_total * c_g):
        k = job // c_g
        c = job % c_g
        ci = (k // k_g) * c_g + c
        part = np.empty(width, dtype=out.dtype)
        for t in range(n_taps):
            o = tap_off[t]
            part[:] = 0
            for b in range(n):
                src = xp[b, ci]
                row = gy[b, k]
                for r in range(rows.shape[0]):
                    base = o + rows[r]
                    for i in range(width):
                        part[i] += row[r * width + i] * src[base + i * step]
            out[k, c, t] = part.sum()


_STRIDED = {
    name: (_compile(fn, False), _compile(fn, True))
    for name, fn in (("forward", _forward_strided), ("grad_input", _grad_input_strided),
                     ("grad_weight", _grad_weight_strided))
}


def strided_kernel(name: str, work: int):
    """The serial or parallel strided kernel ``name`` for ``work`` multiply-adds."""
    return _STRIDED[name][work >= PARALLEL_MIN_WORK]


@lru_cache(maxsize=256)
def strided_arrays(plan):
    """``(tap_off, rows, width, step)``: flat offsets in the padded input ``plan.full`` for the strided kernels."""
    full_strides = [int(np.prod(plan.full[i + 1:])) for i in range(len(plan.full))]
    tap_off = np.array([sum(mi * d * fs for mi, d, fs in zip(m, plan.dilation, full_strides))
                        for m in np.ndindex(*plan.kernel)], dtype=np.int64)
    lead = plan.out[:-1]
    rows = np.array([sum(oi * s * fs for oi, s, fs in zip(o, plan.stride, full_strides))
                     for o in np.ndindex(*lead)] if lead else [0], dtype=np.int64)
    return tap_off, rows, plan.out[-1], plan.stride[-1]
