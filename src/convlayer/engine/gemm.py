"""Convolution as GEMM over tap slices (implicit GEMM in the BLAS-friendly layout).

Two strategies, chosen per problem by :func:`_strategy`:

``"taps"`` (many channels per group): no patch matrix at all. For each
kernel tap, one batched BLAS call multiplies the tap's weights
``(groups, K_g, C_g)`` with the tap's contiguous input slice
``(n, groups, C_g, L)`` and accumulates into the output. The slices are
views, so the only workspace is the output itself.

``"cols"`` (few channels per group, where a GEMM with inner size ``C_g``
would be inefficient): the patch matrix is built tap by tap from contiguous
slices of the phase-split input (see :mod:`.windows`) in the layout
``(n, groups, C_g * T, L)``, so that one batched BLAS call

    ``(groups, K_g, C_g*T) @ (n, groups, C_g*T, L) -> (n, groups, K_g, L)``

produces the output directly in channels-first order. The gradients are
the same products with the roles swapped. Batches are processed in chunks
so the workspace stays under :func:`convlayer.get_workspace_limit`.

Inputs here are already validated, padded and of one float dtype.
"""

from __future__ import annotations

import numpy as np

from .. import _config
from .windows import WindowPlan, gather_taps, lattice_embed, lattice_mask, lattice_view, merge_phases, scatter_taps, split_phases


# Channels per group from which per-tap GEMMs (inner size C_g) beat
# building the patch matrix (inner size C_g * taps). Measured on the
# ResNet 3x3 layer (C=64) and LeNet layers (C=1, 6); see BENCHMARKS.md.
TAPS_MIN_CHANNELS = 16


def _strategy(c_g: int, plan) -> str:
    return "taps" if c_g >= TAPS_MIN_CHANNELS and plan.n_taps > 1 else "cols"


def _tap_views(xph: np.ndarray, n: int, groups: int, plan: WindowPlan):
    """Yield ``(t, view (n, groups, C_g, L))`` of each tap's input slice (no copies)."""
    v = xph.reshape(n, groups, xph.shape[0] // (n * groups), plan.phases, plan.q_size)  # (n, g, C_g, R, Q)
    L = plan.length
    for t, (r, off) in enumerate(plan.taps):
        yield t, v[:, :, :, r, off:off + L]


def _chunks(n: int, per_item_bytes: int):
    step = max(1, _config.get_workspace_limit() // max(per_item_bytes, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _cols(xp_chunk: np.ndarray, plan: WindowPlan, groups: int) -> np.ndarray:
    """Patch matrix ``(n, groups, C_g*T, L)`` of a padded chunk ``(n, C, *P)``."""
    n, c = xp_chunk.shape[:2]
    xph = split_phases(xp_chunk.reshape(n * c, *xp_chunk.shape[2:]), plan)  # (n*C, R, Q)
    cols = gather_taps(xph, plan)  # (n*C, T, L)
    return cols.reshape(n, groups, (c // groups) * plan.n_taps, plan.length)


def _workspace_per_item(c: int, k: int, plan: WindowPlan, itemsize: int) -> int:
    return (c * (plan.n_taps + plan.phases) + k) * plan.length * itemsize


def conv_forward(xp: np.ndarray, w: np.ndarray, groups: int, plan: WindowPlan) -> np.ndarray:
    """Valid cross-correlation of padded ``xp (N, C, *P)`` with ``w (K, C/g, *k)``: ``(N, K, *out)``."""
    n, c = xp.shape[:2]
    k = w.shape[0]
    wmat = w.reshape(groups, k // groups, (c // groups) * plan.n_taps)  # (g, K_g, C_g*T)
    y = np.empty((n, k, *plan.out), dtype=xp.dtype)
    if n == 0:
        return y
    if _strategy(c // groups, plan) == "taps":
        wtaps = np.moveaxis(wmat.reshape(groups, k // groups, c // groups, plan.n_taps), -1, 0)  # (T, g, K_g, C_g)
        for sl in _chunks(n, _workspace_per_item(0, 2 * k, plan, xp.itemsize)):
            m = xp[sl].shape[0]
            xph = split_phases(xp[sl].reshape(m * c, *xp.shape[2:]), plan)  # (n*C, R, Q)
            acc = tmp = None
            for t, view in _tap_views(xph, m, groups, plan):
                if acc is None:
                    acc = np.matmul(wtaps[t], view)  # (n, g, K_g, L)
                    tmp = np.empty_like(acc)
                else:
                    np.matmul(wtaps[t], view, out=tmp)
                    acc += tmp
            y[sl] = lattice_view(acc.reshape(m, k, plan.length), plan)
        return y
    for sl in _chunks(n, _workspace_per_item(c, k, plan, xp.itemsize)):
        cols = _cols(xp[sl], plan, groups)  # (n, g, C_g*T, L)
        acc = np.matmul(wmat, cols)  # (n, g, K_g, L)
        y[sl] = lattice_view(acc.reshape(acc.shape[0], k, plan.length), plan)
    return y


def conv_grad_input(gy: np.ndarray, w: np.ndarray, groups: int, plan: WindowPlan, in_channels: int) -> np.ndarray:
    """Gradient w.r.t. the padded input: ``gy (N, K, *out)`` to ``(N, C, *P)``."""
    n, k = gy.shape[:2]
    c = in_channels
    wmat_t = w.reshape(groups, k // groups, (c // groups) * plan.n_taps).transpose(0, 2, 1)  # (g, C_g*T, K_g)
    finite_w = bool(np.isfinite(w).all())
    mask = None if finite_w else lattice_mask(plan)
    gxp = np.empty((n, c, *plan.full), dtype=gy.dtype)
    for sl in _chunks(n, _workspace_per_item(c, k, plan, gy.itemsize)):
        m = gy[sl].shape[0]
        gflat = lattice_embed(gy[sl], plan).reshape(m, groups, k // groups, plan.length)  # (n, g, K_g, L)
        gcols = np.matmul(wmat_t, gflat)  # (n, g, C_g*T, L)
        if mask is not None:
            # 0 * inf in the dropped columns must not leak into real positions.
            gcols = np.where(mask, gcols, 0)
        gph = scatter_taps(gcols.reshape(m * c, plan.n_taps, plan.length), plan)  # (n*C, R, Q)
        gxp[sl] = merge_phases(gph, plan).reshape(m, c, *plan.full)
    return gxp


def conv_grad_weight(gy: np.ndarray, xp: np.ndarray, groups: int, plan: WindowPlan, kernel_shape) -> np.ndarray:
    """Gradient w.r.t. the weight: ``(K, C/g, *k)`` from ``gy (N, K, *out)`` and padded ``xp``."""
    n, c = xp.shape[:2]
    k = gy.shape[1]
    finite_x = bool(np.isfinite(xp).all())
    mask = None if finite_x else lattice_mask(plan)
    gw = np.zeros((groups, k // groups, (c // groups) * plan.n_taps), dtype=xp.dtype)
    for sl in _chunks(n, _workspace_per_item(c, k, plan, xp.itemsize)):
        cols = _cols(xp[sl], plan, groups)  # (n, g, C_g*T, L)
        if mask is not None:
            cols = np.where(mask, cols, 0)
        m = cols.shape[0]
        gflat = lattice_embed(gy[sl], plan).reshape(m, groups, k // groups, plan.length)  # (n, g, K_g, L)
        gw += np.matmul(gflat, cols.transpose(0, 1, 3, 2)).sum(axis=0)  # (g, K_g, C_g*T)
    return gw.reshape(k, c // groups, *kernel_shape)
