"""Winograd F(4x4, 3x3): 2-D 3x3 convolutions with stride 1 in 2.25x fewer multiplications.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
Each 4x4 tile of outputs is computed from the 6x6 input patch under it as

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

where ``(.)`` is an elementwise product over the 36 transformed
positions. Summed over input channels, those 36 elementwise products are
36 independent GEMMs, ``M[xi] = U[xi] @ V[xi]``, with
``U[xi] (K, C)`` the transformed kernels and ``V[xi] (C, tiles)`` the
transformed input tiles. A direct 3x3 convolution costs 9 multiply-adds
per output and channel pair; this costs 36/16 = 2.25, plus the transforms,
which are linear in the data (compiled loops below, one pass each).

Rounding. The transforms multiply by constants up to 8 (``A``), 5
(``B``) and 1/24 (``G``), so the result is not the GEMM's. Each product
``x_p * w_q`` reaches an output through the transforms with a total weight
of at most ``WINOGRAD_GROWTH = 10.67**2 = 113.8`` (the largest
``sum_xi |A^T[r, xi]| |G[xi, q]| |B^T[xi, p]|``, squared for two axes), and
along the way it is rounded in the input transform (8 steps), the kernel
transform (1, computed in float64), the GEMM's sum over the ``C`` input
channels and the output transform (8). Hence the documented bound, checked
by ``tests/test_winograd.py`` against the float64 reference::

    |y - y_exact| <= (C + 18) * WINOGRAD_GROWTH * eps * sum |x| |w|

over each output's ``9*C`` terms (``eps`` of the dtype); for the weight
gradient, a sum over every tile of the batch, ``C`` becomes the number of
tiles and the sum is over ``|gy| |x|``. Compare about
``9*C * eps * sum|x||w|`` for the patch-matrix GEMM. Measured on random
float32 layers (C = 5 to 128) the error is 13-30 ``eps * sum|x||w|``, 1-2
orders of magnitude above the GEMM's 1-3. Data holding inf or NaN never
takes this path (a transform would spread them over whole tiles); nor does
``force_strategy`` other than ``"winograd"``.

The input is read unpadded: zero padding happens in a small per-plane
buffer, as in :mod:`.direct`. Tiles that overhang the output are computed
on zeros and clipped on the way out.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import blas
from .direct import _FLAGS, PARALLEL_MIN_WORK, _compile


# The transforms (Lavin & Gray, F(4, 3)): U = G g G^T, V = B^T d B, Y = A^T M A. Only G is applied as a
# matrix; B^T and A^T are written out in the compiled loops below (their rows are the formulas there).
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=float)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=float)
# The largest weight with which one product x_p * w_q reaches an output (see the module doc).
WINOGRAD_GROWTH = float(np.einsum("rx,xq,xp->rpq", np.abs(_AT), np.abs(_G), np.abs(_BT)).max() ** 2)
TILE = 4  # outputs per tile and axis
PATCH = 6  # inputs per tile and axis
_CHUNKS = 64  # jobs of planes per transform call: enough to balance threads, few scratch allocations


# G applied on both axes of a 3x3 kernel at once: (G g G^T)[a, b] = sum_ij _GG[6*a + b, 3*i + j] g[i, j].
_GG = np.einsum("ai,bj->abij", _G, _G).reshape(PATCH * PATCH, 9)


def transform_weight(w: np.ndarray) -> np.ndarray:
    """``w (K, C, 3, 3)`` to ``U (36, K, C)``: ``U[6*a + b] = (G w G^T)[a, b]`` (computed in float64, as one
    product with ``kron(G, G)``: 4-5x faster than the einsum over both axes)."""
    k, c = w.shape[:2]
    taps = w.reshape(k * c, 9).T.astype(np.float64)  # (9, K*C)
    # Through blas.matmul: a plain `@` here ran multi-threaded and left OpenBLAS's workers spinning, which
    # halved the speed of the transforms after it (ResNet gate 1.4x -> 2.0x PyTorch's time).
    u = blas.matmul(_GG, taps, np.empty((PATCH * PATCH, k * c)))
    return u.astype(w.dtype).reshape(PATCH * PATCH, k, c)


@njit(inline="always", **_FLAGS)
def _apply_at(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3):  # pragma: no cover - compiled
    """``o_r = sum_a A^T[r, a] m_a`` elementwise over runs: the rows of A^T, written out once.

    One loop per output (one store, a few loads): LLVM vectorises each; a
    single loop writing all of them did not. (B^T stays written out twice in
    :func:`_input_transform`: through a helper like this one, that transform
    measured about 20% slower.)
    """
    c2, c4, c8 = o0.dtype.type(2), o0.dtype.type(4), o0.dtype.type(8)
    for j in range(o0.shape[0]):
        o0[j] = m0[j] + m1[j] + m2[j] + m3[j] + m4[j]
    for j in range(o0.shape[0]):
        o1[j] = m1[j] - m2[j] + c2 * (m3[j] - m4[j])
    for j in range(o0.shape[0]):
        o2[j] = m1[j] + m2[j] + c4 * (m3[j] + m4[j])
    for j in range(o0.shape[0]):
        o3[j] = m1[j] - m2[j] + c8 * (m3[j] - m4[j]) + m5[j]


@njit(inline="always", **_FLAGS)
def _apply_a(g0, g1, g2, g3, o0, o1, o2, o3, o4, o5):  # pragma: no cover - compiled
    """``o_a = sum_r A[a, r] g_r`` with ``A = (A^T)^T`` (6x4), elementwise over runs (see :func:`_apply_at`)."""
    c2, c4, c8 = o0.dtype.type(2), o0.dtype.type(4), o0.dtype.type(8)
    for j in range(o0.shape[0]):
        o0[j] = g0[j]
    for j in range(o0.shape[0]):
        o1[j] = g0[j] + g1[j] + g2[j] + g3[j]
    for j in range(o0.shape[0]):
        o2[j] = g0[j] - g1[j] + g2[j] - g3[j]
    for j in range(o0.shape[0]):
        o3[j] = g0[j] + c2 * g1[j] + c4 * g2[j] + c8 * g3[j]
    for j in range(o0.shape[0]):
        o4[j] = g0[j] - c2 * g1[j] + c4 * g2[j] - c8 * g3[j]
    for j in range(o0.shape[0]):
        o5[j] = g3[j]


@njit(inline="always", **_FLAGS)
def _split_phases(buf, plane, lo_h, lo_w, wq, line):  # pragma: no cover - compiled
    """``buf[4*pr + pc, R*wq + J] = xpad[4R + pr, 4J + pc]``: ``plane`` zero-padded by ``lo_h`` rows and
    ``lo_w`` columns in front (zeros after), split into its 4x4 phases.

    Each row is first copied into ``line`` (whose zero border is never
    written), then de-interleaved into the four column phases.
    """
    h, w = plane.shape
    buf[:] = 0
    cols = min(w, TILE * wq - lo_w)
    for r in range(min(h, TILE * (buf.shape[1] // wq) - lo_h)):
        src = plane[r]
        for i in range(cols):
            line[lo_w + i] = src[i]
        pr = (lo_h + r) % TILE
        start = ((lo_h + r) // TILE) * wq
        p0 = buf[TILE * pr, start:start + wq]
        p1 = buf[TILE * pr + 1, start:start + wq]
        p2 = buf[TILE * pr + 2, start:start + wq]
        p3 = buf[TILE * pr + 3, start:start + wq]
        for j in range(wq):
            p0[j] = line[TILE * j]
            p1[j] = line[TILE * j + 1]
            p2[j] = line[TILE * j + 2]
            p3[j] = line[TILE * j + 3]


def _input_transform(x, lo_h, lo_w, tiles_h, tiles_w, v):  # pragma: no cover - compiled
    """``V[6a+b, c, t] = (B^T d B)[a, b]`` for every plane ``x[b, c]`` and tile ``t``.

    x (n, C, H, W) unpadded; v (36, C, n * tiles_h * (tiles_w + 1)): tile
    ``(ti, tj)`` of image ``b`` is column ``t = (b*tiles_h + ti)*(tiles_w+1) + tj``,
    and the last tile of each row (``tj == tiles_w``) is a dummy that keeps
    every pass one contiguous run over a whole image. The plane is first
    zero-padded into a local buffer split into 4x4 phases
    (:func:`_split_phases`): the six rows (columns) under tile row ``ti``
    (column ``tj``) are then phases 0-3 at ``ti`` and 0-1 at ``ti + 1``, so
    B^T down and B across are elementwise over contiguous runs, which
    vectorise.
    """
    c2, c4, c5 = v.dtype.type(2), v.dtype.type(4), v.dtype.type(5)  # typed: no float64 promotion
    n, c_total = x.shape[:2]
    wq = tiles_w + 1
    run = tiles_h * wq
    jobs = n * c_total
    per_chunk = -(-jobs // min(jobs, _CHUNKS))
    for chunk in prange(-(-jobs // per_chunk)):  # scratch allocated once per chunk of planes
        buf = np.empty((TILE * TILE, (tiles_h + 1) * wq), dtype=v.dtype)
        u = np.zeros((PATCH, TILE, run + 1), dtype=v.dtype)  # the extra zero feeds the last dummy tile
        line = np.zeros(TILE * wq, dtype=v.dtype)
        for job in range(chunk * per_chunk, min(jobs, (chunk + 1) * per_chunk)):
            c = job // n  # image-minor: consecutive jobs fill consecutive runs of each of the 36 rows
            b = job % n
            _split_phases(buf, x[b, c], lo_h, lo_w, wq, line)
            for pc in range(TILE):  # B^T down each band of 6 rows, all tiles at once
                r0, r1 = buf[pc, :run], buf[TILE + pc, :run]
                r2, r3 = buf[2 * TILE + pc, :run], buf[3 * TILE + pc, :run]
                r4, r5 = buf[pc, wq:wq + run], buf[TILE + pc, wq:wq + run]
                u0, u1, u2 = u[0, pc, :run], u[1, pc, :run], u[2, pc, :run]
                u3, u4, u5 = u[3, pc, :run], u[4, pc, :run], u[5, pc, :run]
                for j in range(run):
                    u0[j] = c4 * r0[j] - c5 * r2[j] + r4[j]
                for j in range(run):
                    u1[j] = -c4 * (r1[j] + r2[j]) + r3[j] + r4[j]
                for j in range(run):
                    u2[j] = c4 * (r1[j] - r2[j]) - r3[j] + r4[j]
                for j in range(run):
                    u3[j] = c2 * (r3[j] - r1[j]) - r2[j] + r4[j]
                for j in range(run):
                    u4[j] = c2 * (r1[j] - r3[j]) - r2[j] + r4[j]
                for j in range(run):
                    u5[j] = c4 * r1[j] - c5 * r3[j] + r5[j]
            base = b * run
            for a in range(PATCH):  # B across: columns 0-3 of the tile, then 0-1 of the next
                d0, d1, d2, d3 = u[a, 0, :run], u[a, 1, :run], u[a, 2, :run], u[a, 3, :run]
                d4, d5 = u[a, 0, 1:run + 1], u[a, 1, 1:run + 1]
                v0 = v[PATCH * a, c, base:base + run]
                v1 = v[PATCH * a + 1, c, base:base + run]
                v2 = v[PATCH * a + 2, c, base:base + run]
                v3 = v[PATCH * a + 3, c, base:base + run]
                v4 = v[PATCH * a + 4, c, base:base + run]
                v5 = v[PATCH * a + 5, c, base:base + run]
                for j in range(run):
                    v0[j] = c4 * d0[j] - c5 * d2[j] + d4[j]
                for j in range(run):
                    v1[j] = -c4 * (d1[j] + d2[j]) + d3[j] + d4[j]
                for j in range(run):
                    v2[j] = c4 * (d1[j] - d2[j]) - d3[j] + d4[j]
                for j in range(run):
                    v3[j] = c2 * (d3[j] - d1[j]) - d2[j] + d4[j]
                for j in range(run):
                    v4[j] = c2 * (d1[j] - d3[j]) - d2[j] + d4[j]
                for j in range(run):
                    v5[j] = c4 * d1[j] - c5 * d3[j] + d5[j]


def _output_transform(m, tiles_h, tiles_w, out):  # pragma: no cover - compiled
    """``out[b, k]`` (n, K, OH, OW) from ``M (36, K, tiles)`` (tiles as in :func:`_input_transform`):
    ``Y = A^T m A`` per tile, clipped to the output.

    Both passes are elementwise over all tiles of an image (contiguous in
    ``M``); the 4x4 results are then interleaved into the output rows.
    """
    n, k_total, oh, ow = out.shape
    wq = tiles_w + 1
    run = tiles_h * wq
    full = ow // TILE  # tiles with all 4 columns inside the output
    jobs = n * k_total
    per_chunk = -(-jobs // min(jobs, _CHUNKS))
    for chunk in prange(-(-jobs // per_chunk)):  # scratch allocated once per chunk of planes
        s = np.empty((PATCH, TILE, run), dtype=out.dtype)
        y = np.empty((TILE, TILE, run), dtype=out.dtype)
        for job in range(chunk * per_chunk, min(jobs, (chunk + 1) * per_chunk)):
            k = job // n  # image-minor: consecutive jobs read consecutive runs of each of the 36 rows
            b = job % n
            base = b * run
            for a in range(PATCH):  # A across
                o = PATCH * a
                _apply_at(m[o, k, base:base + run], m[o + 1, k, base:base + run], m[o + 2, k, base:base + run],
                          m[o + 3, k, base:base + run], m[o + 4, k, base:base + run], m[o + 5, k, base:base + run],
                          s[a, 0], s[a, 1], s[a, 2], s[a, 3])
            for col in range(TILE):  # A down
                _apply_at(s[0, col], s[1, col], s[2, col], s[3, col], s[4, col], s[5, col],
                          y[0, col], y[1, col], y[2, col], y[3, col])
            for ti in range(tiles_h):
                for r in range(min(TILE, oh - TILE * ti)):
                    row = out[b, k, TILE * ti + r]
                    yr = y[r]
                    t0 = ti * wq
                    for j in range(full):
                        for col in range(TILE):
                            row[TILE * j + col] = yr[col, t0 + j]
                    for col in range(ow - TILE * full):
                        row[TILE * full + col] = yr[col, t0 + full]


def _grad_transform(gy, tiles_h, tiles_w, ug):  # pragma: no cover - compiled
    """``UG[6a+b, k, t] = (A g A^T)[a, b]`` for each 4x4 tile ``g`` of every plane ``gy[b, k]``
    (zero past the output and on the dummy tiles; tiles as in :func:`_input_transform`).

    As for the input, the plane is split into 4x4 phases first
    (:func:`_split_phases`, no padding) so both passes are contiguous.
    """
    n, k_total = gy.shape[:2]
    wq = tiles_w + 1
    run = tiles_h * wq
    jobs = n * k_total
    per_chunk = -(-jobs // min(jobs, _CHUNKS))
    for chunk in prange(-(-jobs // per_chunk)):  # scratch allocated once per chunk of planes
        buf = np.empty((TILE * TILE, run), dtype=ug.dtype)
        h = np.empty((PATCH, TILE, run), dtype=ug.dtype)
        line = np.zeros(TILE * wq, dtype=ug.dtype)
        for job in range(chunk * per_chunk, min(jobs, (chunk + 1) * per_chunk)):
            k = job // n  # image-minor: consecutive jobs fill consecutive runs of each of the 36 rows
            b = job % n
            _split_phases(buf, gy[b, k], 0, 0, wq, line)
            for pc in range(TILE):  # A down each tile's 4 rows
                _apply_a(buf[pc], buf[TILE + pc], buf[2 * TILE + pc], buf[3 * TILE + pc],
                         h[0, pc], h[1, pc], h[2, pc], h[3, pc], h[4, pc], h[5, pc])
            base = b * run
            for a in range(PATCH):  # A across each tile's 4 columns
                o = PATCH * a
                _apply_a(h[a, 0], h[a, 1], h[a, 2], h[a, 3],
                         ug[o, k, base:base + run], ug[o + 1, k, base:base + run], ug[o + 2, k, base:base + run],
                         ug[o + 3, k, base:base + run], ug[o + 4, k, base:base + run], ug[o + 5, k, base:base + run])


_INPUT = (_compile(_input_transform, False), _compile(_input_transform, True))
_OUTPUT = (_compile(_output_transform, False), _compile(_output_transform, True))
_GRAD = (_compile(_grad_transform, False), _compile(_grad_transform, True))


def tiles(out_shape) -> tuple[int, int]:
    """Tiles per axis for a ``(OH, OW)`` output."""
    return -(-out_shape[0] // TILE), -(-out_shape[1] // TILE)


def tiles_per_image(out_shape) -> int:
    """GEMM columns per image: the tiles plus one dummy per tile row (see :func:`_input_transform`)."""
    th, tw = tiles(out_shape)
    return th * (tw + 1)


def bytes_per_image(c: int, k: int, out_shape, itemsize: int) -> int:
    """Workspace of one image: its transformed input ``V`` and products ``M``."""
    return PATCH * PATCH * (c + k) * tiles_per_image(out_shape) * itemsize


def forward(x: np.ndarray, u: np.ndarray, pads, out: np.ndarray, v: np.ndarray, m: np.ndarray) -> None:
    """One chunk: ``out (n, K, OH, OW)`` from ``x (n, C, H, W)`` zero-padded by ``pads``, with ``u`` from
    :func:`transform_weight` and scratch ``v (36, C, n*tiles)``, ``m (36, K, n*tiles)``."""
    n, c = x.shape[:2]
    th, tw = tiles(out.shape[2:])
    work = n * c * th * tw * PATCH * PATCH * 8  # transform arithmetic, the same order for both
    _INPUT[work >= PARALLEL_MIN_WORK](np.ascontiguousarray(x), pads[0][0], pads[1][0], th, tw, v)
    blas.matmul(u, v, m)  # 36 GEMMs (K, C) @ (C, tiles)
    _OUTPUT[work >= PARALLEL_MIN_WORK](m, th, tw, out)


def grad_weight(x: np.ndarray, gy: np.ndarray, pads, acc: np.ndarray, v: np.ndarray, ug: np.ndarray) -> None:
    """One chunk of the weight gradient: ``acc (36, K, C) += UG @ V^T``, the transformed sums over tiles.

    ``gw = G^T acc G`` (:func:`weight_from_products`) once every chunk is in: the weight gradient of a
    3x3 stride-1 convolution is itself a correlation, of ``x`` with ``gy``, and with the roles of the
    transforms exchanged (A for the 4x4 tile of ``gy``, B^T as in the forward, G^T for the 3x3 result)
    it is 36 GEMMs over the tiles, ``(K, tiles) @ (tiles, C)``.
    """
    n, c = x.shape[:2]
    th, tw = tiles(gy.shape[2:])
    work = n * c * th * tw * PATCH * PATCH * 8
    _INPUT[work >= PARALLEL_MIN_WORK](np.ascontiguousarray(x), pads[0][0], pads[1][0], th, tw, v)
    _GRAD[work >= PARALLEL_MIN_WORK](np.ascontiguousarray(gy), th, tw, ug)
    part = blas.matmul(ug, v.transpose(0, 2, 1), np.empty(acc.shape, dtype=acc.dtype))
    acc += part


def weight_from_products(acc: np.ndarray, dtype) -> np.ndarray:
    """``G^T M G`` for each (k, c): ``acc (36, K, C)`` to the gradient ``(K, C, 3, 3)`` (in float64)."""
    k, c = acc.shape[1:]
    g = blas.matmul(_GG.T, acc.reshape(PATCH * PATCH, k * c).astype(np.float64), np.empty((9, k * c)))  # (9, K*C)
    return np.ascontiguousarray(g.T.astype(dtype)).reshape(k, c, 3, 3)


def supported(plan) -> bool:
    """Geometry Winograd F(4x4, 3x3) handles: 2-D, 3x3, stride 1, dilation 1 (any zero padding).

    Dilated 3x3 layers split into dense ones on the input's dilation phases
    were tried and measured slower than the patch matrix (64 channels at
    64x64, dilation 2: 35-39 vs 23-24 ms forward): each phase is a small
    image, and the transforms' cost per plane dominates.
    """
    return plan.kernel == (3, 3) and plan.unit_stride and plan.dilation == (1, 1) and math.prod(plan.out) > 0
