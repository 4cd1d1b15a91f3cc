"""Direct compiled kernels (Numba) for depthwise, grouped and few-channel convolutions.

When every output channel sums over only a few input channels (``C_g``)
and each group has few outputs (``K_g``), a GEMM is all overhead: its
inner dimension ``C_g * taps`` is tiny and the patch matrix costs ``taps``
copies of the input. These kernels instead work one input plane at a time:

1. **Fill.** The plane ``x[b, c]`` (unpadded, as the caller holds it) is
   copied into a small buffer in the phase-split layout of
   :mod:`.windows`, zero padding and stride phases included. The copy runs
   along precomputed segments (one per row of each phase, see
   :func:`fill_arrays`), so the padded input is never materialised in
   memory: it only ever exists one plane at a time, in cache.
2. **Taps.** Each kernel tap then reads one contiguous run of that buffer
   per output row, and the innermost loop over a row is contiguous, so
   LLVM vectorises it.

**Lanes.** On small planes (LeNet's 10x10 outputs) each tap's run is
short, and the loops spend most of their time being entered and in their
scalar remainders. The ``*_lanes`` kernels fill ``LANES`` images' planes
side by side (position ``p`` of image ``l`` at ``p * LANES + l``), so the
same loops run ``LANES`` times longer, over whole vectors.

The gradient with respect to the input runs the same steps backwards
(accumulate into the buffer, then copy the segments back out: each input
element lies in exactly one segment), and the weight gradient
accumulates per-lane partial sums across the batch. Only real output
positions are read or written, so NaN and infinity propagate exactly as
IEEE arithmetic says, with no dropped-column masking.

The accumulators are arrays local to the kernel, and every inner loop
runs over slices taken just before it (``dst[i] += w * src[i]``): that is
the form LLVM vectorises. Indexing with an offset inside the loop
(``acc[o + i]``) does not vectorise and ran 5x slower on the MobileNet
depthwise layer; accumulating into the output in place ran 9x slower.
Copies are written the same way: Numba's slice assignment
(``a[i:j] = b[k:l]``) checks for overlap and ran at half the speed.

Kernels assume valid, contiguous, same-dtype input (the wrappers in
:mod:`.gemm` guarantee it) and never check arguments. They are compiled
once per dtype and cached on disk (``cache=True``). Reductions use the
``reassoc``/``contract`` fast-math flags only, so NaN and infinity keep
IEEE semantics.
"""

from __future__ import annotations

import math
import types
from functools import lru_cache

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange
from numba import types as nbtypes
from numba.extending import intrinsic

from .windows import lattice_mask

_FLAGS = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"})

# Work (multiply-adds, or bytes for the copies) above which the parallel gathers, scatters, pooling and
# Winograd transforms are used. Below it the serial ones won when OpenBLAS's idle workers kept spinning for
# ~0.1 s after each product and starved Numba's threads (LeNet-5's first layer: 8.6 ms parallel vs 1.6 ms
# serial inside a training step), before :mod:`.blas` kept them idle.
PARALLEL_MIN_WORK = 20_000_000
# Multiply-adds from which the convolution kernels (these direct and lanes kernels, and the implicit GEMM's)
# run on all threads. One process, alternating (ms, 20 M against 2 M): the 1-D stem's weight gradient (16 M)
# 0.75-0.88 vs 0.47-0.55, LeNet C1 at batch 64 (7.5 M) forward 0.35-0.43 vs 0.24-0.27, input gradient
# 0.56-0.59 vs 0.34-0.38, weight gradient 0.39-0.44 vs 0.24-0.29; the implicit GEMM's 1-D stem forward 0.8-1.5
# vs 0.4-0.6. LeNet-5 training (python -m benchmarks.lenet --images 12800) within noise: lenet5 5049-6233 vs
# 5160-6708 images/s, lenet5-modern 10235-10853 vs 9074-12334.
KERNEL_PARALLEL_MIN_WORK = 2_000_000
# Elements from which the compiled copies (:func:`place`, the implicit GEMM's weight packing) run on all
# threads: far less work per element than the kernels' multiply-adds.
COPY_PARALLEL_MIN = 1 << 16
# The compute-bound kernels' jobs go to the threads as they come free, each taking the next from a counter that
# they increment atomically (:func:`_take`), instead of in equal shares fixed in advance (Numba's ``prange``).
# Where the jobs differ in length (the speech layer's blocks) or a thread loses its core for a while to another
# process (a shared machine), the others take up its jobs; the shares left the pass as slow as its slowest
# thread. They are the implicit GEMM's forward and input gradient (see :mod:`.implicit`), whose jobs each write
# outputs of their own. On Zen 3, on a busy stretch of the shared machine, one process flipping the setting call
# by call, 8 calls each, three processes (ms, the fastest call of each process, dynamic / shares): ResNet 3x3
# 64->64's forward 14.73-17.24 / 16.66-18.56, input gradient 14.36-16.08 / 16.00-18.99; DeepBench C128's
# forward 29.19-36.74 / 31.31-40.50 and input gradient 27.75-37.03 / 31.04-39.46; 3x3x3 C64's forward
# 20.86-29.81 / 21.35-40.84; the speech layer's forward, whose blocks differ in length, 5.15-7.64 / 5.46-9.93.
# On calmer stretches they ran even or 1-2% faster (C32's
# forward 12.99 / 13.27; WaveNet's input gradient 7.65 / 7.42 was the one loss seen). The plane kernels'
# jobs (a depthwise plane, a few microseconds) lost with the counter (MobileNet's stride-1 depthwise forward
# 1.73 / 1.54), and the weight gradient's chunks of patch rows are too few to share out (2-6 a pass, even):
# both keep their shares. So do the weight gradients by blocks of positions, though the counter made them
# faster too on the busy stretch (ResNet 3x3's 15.40-18.21 / 20.44-20.82, two processes): each thread adds its
# jobs into a part of its own, and with the jobs taken as they come, which thread adds which, and so the sum's
# last bits, would change from call to call; a seeded training must repeat itself.
DYNAMIC_JOBS = True


# ``step`` of the fill segments when the plane is first split into its even and odd columns (see
# :func:`fill_arrays`): a stride-2 copy element by element ran at 3 cycles per element.
SPLIT2 = -2


@njit(**_FLAGS)
def _split_columns(plane):  # pragma: no cover - compiled
    """``plane`` (rows of even width, flat) as its even columns, then its odd columns: both loads of a pair
    in one loop, so LLVM vectorises them (8x faster than reading every other element on its own)."""
    half = plane.shape[0] // 2
    out = np.empty(plane.shape[0], dtype=plane.dtype)
    even = out[:half]
    odd = out[half:]
    for j in range(half):
        even[j] = plane[2 * j]
        odd[j] = plane[2 * j + 1]
    return out


@njit(**_FLAGS)
def _merge_columns(plane, split):  # pragma: no cover - compiled
    """Adjoint (and inverse) of :func:`_split_columns`: ``plane`` from its even and odd columns."""
    half = plane.shape[0] // 2
    even = split[:half]
    odd = split[half:]
    for j in range(half):
        plane[2 * j] = even[j]
        plane[2 * j + 1] = odd[j]


@njit(**_FLAGS)
def _fill(buf, plane, seg_dst, seg_src, seg_len, step, value=0.0):  # pragma: no cover - compiled
    """Phase-split copy of one unpadded ``plane`` into ``buf``, padded with ``value`` (see :func:`fill_arrays`)."""
    buf[:] = value
    if step == SPLIT2:
        plane = _split_columns(plane)
        step = 1
    for s in range(seg_dst.shape[0]):
        dst = buf[seg_dst[s]:seg_dst[s] + seg_len[s]]
        if step == 1:  # a contiguous source vectorises; a strided view would not
            src = plane[seg_src[s]:seg_src[s] + seg_len[s]]
            for i in range(seg_len[s]):
                dst[i] = src[i]
        elif step == 2:  # a constant stride vectorises too (interleaved loads): the common strided layer
            src = plane[seg_src[s]:seg_src[s] + 2 * seg_len[s]]
            for i in range(seg_len[s]):
                dst[i] = src[2 * i]
        else:
            for i in range(seg_len[s]):
                dst[i] = plane[seg_src[s] + i * step]


@njit(**_FLAGS)
def _unfill(plane, buf, seg_dst, seg_src, seg_len, step, complete):  # pragma: no cover - compiled
    """Adjoint of :func:`_fill`: the real positions of ``buf`` back into ``plane`` (overwritten)."""
    target = plane
    if step == SPLIT2:  # write the even and odd columns apart, then interleave them
        target = np.empty(plane.shape[0], dtype=plane.dtype)
    if not complete:  # input elements that no window reaches get a zero gradient
        target[:] = 0
    for s in range(seg_dst.shape[0]):
        src = buf[seg_dst[s]:seg_dst[s] + seg_len[s]]
        if step == 1 or step == SPLIT2:
            dst = target[seg_src[s]:seg_src[s] + seg_len[s]]
            for i in range(seg_len[s]):
                dst[i] = src[i]
        else:
            for i in range(seg_len[s]):
                plane[seg_src[s] + i * step] = src[i]
    if step == SPLIT2:
        _merge_columns(plane, target)


@njit(**_FLAGS)
def _rows_out(row, acc, pos, width):  # pragma: no cover - compiled
    """``row[q*width : (q+1)*width] = acc[pos[q] : pos[q]+width]`` for every output row ``q``."""
    for q in range(pos.shape[0]):
        dst = row[q * width:(q + 1) * width]
        src = acc[pos[q]:pos[q] + width]
        for i in range(width):
            dst[i] = src[i]


@njit(**_FLAGS)
def _rows_in(acc, row, pos, width):  # pragma: no cover - compiled
    """Adjoint of :func:`_rows_out` (``acc`` keeps its other positions)."""
    for q in range(pos.shape[0]):
        dst = acc[pos[q]:pos[q] + width]
        src = row[q * width:(q + 1) * width]
        for i in range(width):
            dst[i] = src[i]


@njit(inline="always", **_FLAGS)
def _by_fives(n_taps):  # pragma: no cover - compiled
    """Whether the tap loops take five taps per pass (while five remain) before threes: unless the taps divide
    into threes (3x3, 3x3x3), which three taps per pass cover with no single-tap rest."""
    return n_taps % 3 != 0


# The forward and weight-gradient tap loops are compiled as functions of their own, not inlined into every
# kernel that calls them: the same speed (interleaved A/B), and the first call of the direct and lanes
# kernels compiles in 30 s instead of 54 (23 s before the four-output and two-output blocks).
@njit(**_FLAGS)
def _taps_forward(acc, plane, wk, bases, runs, run_width):  # pragma: no cover - compiled
    """``acc[r*run_width + i] += sum_t wk[t] * plane[bases[t] + runs[r] + i]``, five taps per pass over ``acc``
    (see :func:`_by_fives`: 5x5 and 7x7 kernels), then three, then one: a fifth or a third of its loads and
    stores."""
    n_taps = wk.shape[0]
    t = 0
    while t + 5 <= n_taps and _by_fives(n_taps):
        w0, w1, w2, w3, w4 = wk[t], wk[t + 1], wk[t + 2], wk[t + 3], wk[t + 4]
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            s3 = plane[bases[t + 3] + runs[r]:bases[t + 3] + runs[r] + run_width]
            s4 = plane[bases[t + 4] + runs[r]:bases[t + 4] + runs[r] + run_width]
            dst = acc[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                dst[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i]
        t += 5
    while t + 3 <= n_taps:
        w0, w1, w2 = wk[t], wk[t + 1], wk[t + 2]
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            dst = acc[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                dst[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i]
        t += 3
    for t in range(t, n_taps):
        wv = wk[t]
        for r in range(runs.shape[0]):
            src = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            dst = acc[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                dst[i] += wv * src[i]


@njit(**_FLAGS)
def _taps_forward4(acc, plane, wk, bases, runs, run_width):  # pragma: no cover - compiled
    """:func:`_taps_forward` for four outputs at once: ``acc (4, R*run_width)`` with kernels ``wk (4, T)``.

    Each vector loaded from ``plane`` serves all four outputs, so a pass of
    five taps makes 20 multiply-adds for 13 loads and stores where
    :func:`_taps_forward` makes five for seven: LeNet C3's forward ran
    1.33-1.36x faster (four outputs of five taps gave more than two or eight
    outputs, or three taps; 3x3 kernels keep three taps per pass, 1.32x).
    The twenty weights and the five inputs still fit in the 32 vector
    registers.
    """
    n_taps = wk.shape[1]
    t = 0
    while t + 5 <= n_taps and _by_fives(n_taps):
        a0, a1, a2, a3, a4 = wk[0, t], wk[0, t + 1], wk[0, t + 2], wk[0, t + 3], wk[0, t + 4]
        b0, b1, b2, b3, b4 = wk[1, t], wk[1, t + 1], wk[1, t + 2], wk[1, t + 3], wk[1, t + 4]
        c0, c1, c2, c3, c4 = wk[2, t], wk[2, t + 1], wk[2, t + 2], wk[2, t + 3], wk[2, t + 4]
        e0, e1, e2, e3, e4 = wk[3, t], wk[3, t + 1], wk[3, t + 2], wk[3, t + 3], wk[3, t + 4]
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            s3 = plane[bases[t + 3] + runs[r]:bases[t + 3] + runs[r] + run_width]
            s4 = plane[bases[t + 4] + runs[r]:bases[t + 4] + runs[r] + run_width]
            d0 = acc[0, r * run_width:(r + 1) * run_width]
            d1 = acc[1, r * run_width:(r + 1) * run_width]
            d2 = acc[2, r * run_width:(r + 1) * run_width]
            d3 = acc[3, r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                v0, v1, v2, v3, v4 = s0[i], s1[i], s2[i], s3[i], s4[i]
                d0[i] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4
                d1[i] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4
                d2[i] += c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 + c4 * v4
                d3[i] += e0 * v0 + e1 * v1 + e2 * v2 + e3 * v3 + e4 * v4
        t += 5
    while t + 3 <= n_taps:
        a0, a1, a2 = wk[0, t], wk[0, t + 1], wk[0, t + 2]
        b0, b1, b2 = wk[1, t], wk[1, t + 1], wk[1, t + 2]
        c0, c1, c2 = wk[2, t], wk[2, t + 1], wk[2, t + 2]
        e0, e1, e2 = wk[3, t], wk[3, t + 1], wk[3, t + 2]
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            d0 = acc[0, r * run_width:(r + 1) * run_width]
            d1 = acc[1, r * run_width:(r + 1) * run_width]
            d2 = acc[2, r * run_width:(r + 1) * run_width]
            d3 = acc[3, r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                v0, v1, v2 = s0[i], s1[i], s2[i]
                d0[i] += a0 * v0 + a1 * v1 + a2 * v2
                d1[i] += b0 * v0 + b1 * v1 + b2 * v2
                d2[i] += c0 * v0 + c1 * v1 + c2 * v2
                d3[i] += e0 * v0 + e1 * v1 + e2 * v2
        t += 3
    for t in range(t, n_taps):
        a0, b0, c0, e0 = wk[0, t], wk[1, t], wk[2, t], wk[3, t]
        for r in range(runs.shape[0]):
            src = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            d0 = acc[0, r * run_width:(r + 1) * run_width]
            d1 = acc[1, r * run_width:(r + 1) * run_width]
            d2 = acc[2, r * run_width:(r + 1) * run_width]
            d3 = acc[3, r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                v = src[i]
                d0[i] += a0 * v
                d1[i] += b0 * v
                d2[i] += c0 * v
                d3[i] += e0 * v


@njit(**_FLAGS)
def _taps_forward9_rows(row, plane, wk, bases, pos, width):  # pragma: no cover - compiled
    """``row[q*width + i] = sum_t wk[t] * plane[bases[t] + pos[q] + i]`` for nine taps (3x3, plain or strided):
    all taps in one pass, straight into the output row, where :func:`_taps_forward` makes three passes over an
    accumulator (zeroed first) that is then copied out. MobileNet's depthwise forwards (one process, three
    rounds): 3x3 3.2-3.5 vs 3.9-4.2 ms, 3x3/2 5.5-6.1 vs 6.4-7.0. One pass over the whole run (dropped
    columns included, then copied out) was no faster: 3.4-3.6 and 6.3-7.1.

    Each row is computed ``wide`` positions long, a multiple of 32 (the vector loop's step in float32 with
    AVX2, where it was measured: 8 lanes, 4 vectors; with 16 lanes the loop may still end in a remainder),
    where the plane and ``row`` have room: the positions past the row's end land on the next rows, which are
    written after it, and the loop runs without a scalar remainder (56 outputs: 64 computed instead
    of 32 in vectors and 24 one by one). The last rows, which have no room, take their exact width. Against
    the exact width everywhere (one process, alternating, two rounds): 3x3 3.0-3.9 vs 3.3-4.4 ms, 3x3/2
    5.0-5.3 vs 6.0-8.0."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wk[0], wk[1], wk[2], wk[3], wk[4], wk[5], wk[6], wk[7], wk[8]
    wide = -(-width // 32) * 32
    last = max(bases[0], bases[1], bases[2], bases[3], bases[4], bases[5], bases[6], bases[7], bases[8])
    for q in range(pos.shape[0]):
        p = pos[q]
        span = width
        if q * width + wide <= row.shape[0] and last + p + wide <= plane.shape[0]:
            span = wide
        s0 = plane[bases[0] + p:bases[0] + p + span]
        s1 = plane[bases[1] + p:bases[1] + p + span]
        s2 = plane[bases[2] + p:bases[2] + p + span]
        s3 = plane[bases[3] + p:bases[3] + p + span]
        s4 = plane[bases[4] + p:bases[4] + p + span]
        s5 = plane[bases[5] + p:bases[5] + p + span]
        s6 = plane[bases[6] + p:bases[6] + p + span]
        s7 = plane[bases[7] + p:bases[7] + p + span]
        s8 = plane[bases[8] + p:bases[8] + p + span]
        dst = row[q * width:q * width + span]
        for i in range(span):
            dst[i] = (w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i] + w5 * s5[i] + w6 * s6[i]
                      + w7 * s7[i] + w8 * s8[i])


@njit(inline="always", **_FLAGS)
def _taps_forward_block(acc, planes, wk, bases, runs, run_width):  # pragma: no cover - compiled
    """``acc[j]`` (zeroed here) += the taps of every plane ``planes[c]`` with kernel ``wk[j, c]``, for the
    ``acc.shape[0] <= 4`` outputs of ``wk (outputs, C_g, T)``: four at once, fewer one by one."""
    acc[:] = 0
    for c in range(planes.shape[0]):
        if acc.shape[0] == 4:
            _taps_forward4(acc, planes[c], wk[:, c], bases, runs, run_width)
        else:
            for j in range(acc.shape[0]):
                _taps_forward(acc[j], planes[c], wk[j, c], bases, runs, run_width)


@njit(inline="always", **_FLAGS)
def _taps_grad_input(plane, grad, wk, bases, runs, run_width):  # pragma: no cover - compiled
    """Adjoint of :func:`_taps_forward` in ``plane``: ``plane[bases[t] + runs[r] + i] += wk[t] * grad[...]``."""
    for t in range(wk.shape[0]):
        wv = wk[t]
        for r in range(runs.shape[0]):
            dst = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            src = grad[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                dst[i] += wv * src[i]


@njit(inline="always", **_FLAGS)
def _taps_grad_input3(plane, g0, g1, g2, w0, w1, w2, bases, runs, run_width):  # pragma: no cover - compiled
    """:func:`_taps_grad_input` for three outputs at once (``g0``, ``g1``, ``g2`` with their kernels): one
    pass over ``plane`` per tap instead of three (a third of its loads and stores)."""
    for t in range(w0.shape[0]):
        a0, a1, a2 = w0[t], w1[t], w2[t]
        for r in range(runs.shape[0]):
            dst = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s0 = g0[r * run_width:(r + 1) * run_width]
            s1 = g1[r * run_width:(r + 1) * run_width]
            s2 = g2[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                dst[i] += a0 * s0[i] + a1 * s1[i] + a2 * s2[i]


@njit(**_FLAGS)
def _taps_grad_weight(out, grad, plane, bases, runs, run_width):  # pragma: no cover - compiled
    """Adjoint of :func:`_taps_forward` in ``wk``: ``out[t] = sum_{r,i} grad[r*run_width + i] *
    plane[bases[t] + runs[r] + i]`` (vectorised reductions, five or three taps per pass over ``grad``, see
    :func:`_by_fives`)."""
    n_taps = out.shape[0]
    t = 0
    while t + 5 <= n_taps and _by_fives(n_taps):
        t0 = t1 = t2 = t3 = t4 = out.dtype.type(0)
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            s3 = plane[bases[t + 3] + runs[r]:bases[t + 3] + runs[r] + run_width]
            s4 = plane[bases[t + 4] + runs[r]:bases[t + 4] + runs[r] + run_width]
            gr = grad[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                g = gr[i]
                t0 += g * s0[i]
                t1 += g * s1[i]
                t2 += g * s2[i]
                t3 += g * s3[i]
                t4 += g * s4[i]
        out[t], out[t + 1], out[t + 2], out[t + 3], out[t + 4] = t0, t1, t2, t3, t4
        t += 5
    while t + 3 <= n_taps:
        t0 = t1 = t2 = out.dtype.type(0)
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            gr = grad[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                g = gr[i]
                t0 += g * s0[i]
                t1 += g * s1[i]
                t2 += g * s2[i]
        out[t], out[t + 1], out[t + 2] = t0, t1, t2
        t += 3
    for t in range(t, n_taps):
        total = out.dtype.type(0)
        for r in range(runs.shape[0]):
            src = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            gr = grad[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                total += gr[i] * src[i]
        out[t] = total


@njit(**_FLAGS)
def _taps_grad_weight2(out0, out1, grad0, grad1, plane, bases, runs, run_width):  # pragma: no cover - compiled
    """:func:`_taps_grad_weight` for two outputs at once (``out0`` from ``grad0``, ``out1`` from ``grad1``): each
    vector loaded from ``plane`` serves both, five or three taps per pass as in :func:`_taps_forward`."""
    n_taps = out0.shape[0]
    t = 0
    while t + 5 <= n_taps and _by_fives(n_taps):
        a0 = a1 = a2 = a3 = a4 = b0 = b1 = b2 = b3 = b4 = out0.dtype.type(0)
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            s3 = plane[bases[t + 3] + runs[r]:bases[t + 3] + runs[r] + run_width]
            s4 = plane[bases[t + 4] + runs[r]:bases[t + 4] + runs[r] + run_width]
            g0 = grad0[r * run_width:(r + 1) * run_width]
            g1 = grad1[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                v0, v1, v2, v3, v4 = s0[i], s1[i], s2[i], s3[i], s4[i]
                u = g0[i]
                a0 += u * v0
                a1 += u * v1
                a2 += u * v2
                a3 += u * v3
                a4 += u * v4
                u = g1[i]
                b0 += u * v0
                b1 += u * v1
                b2 += u * v2
                b3 += u * v3
                b4 += u * v4
        out0[t], out0[t + 1], out0[t + 2], out0[t + 3], out0[t + 4] = a0, a1, a2, a3, a4
        out1[t], out1[t + 1], out1[t + 2], out1[t + 3], out1[t + 4] = b0, b1, b2, b3, b4
        t += 5
    while t + 3 <= n_taps:
        a0 = a1 = a2 = b0 = b1 = b2 = out0.dtype.type(0)
        for r in range(runs.shape[0]):
            s0 = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            s1 = plane[bases[t + 1] + runs[r]:bases[t + 1] + runs[r] + run_width]
            s2 = plane[bases[t + 2] + runs[r]:bases[t + 2] + runs[r] + run_width]
            g0 = grad0[r * run_width:(r + 1) * run_width]
            g1 = grad1[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                v0, v1, v2 = s0[i], s1[i], s2[i]
                u = g0[i]
                a0 += u * v0
                a1 += u * v1
                a2 += u * v2
                u = g1[i]
                b0 += u * v0
                b1 += u * v1
                b2 += u * v2
        out0[t], out0[t + 1], out0[t + 2] = a0, a1, a2
        out1[t], out1[t + 1], out1[t + 2] = b0, b1, b2
        t += 3
    for t in range(t, n_taps):
        a0 = b0 = out0.dtype.type(0)
        for r in range(runs.shape[0]):
            src = plane[bases[t] + runs[r]:bases[t] + runs[r] + run_width]
            g0 = grad0[r * run_width:(r + 1) * run_width]
            g1 = grad1[r * run_width:(r + 1) * run_width]
            for i in range(run_width):
                a0 += g0[i] * src[i]
                b0 += g1[i] * src[i]
        out0[t], out1[t] = a0, b0


@njit(inline="always", **_FLAGS)
def _taps_grad_weight_block(out, grad, planes, bases, runs, run_width):  # pragma: no cover - compiled
    """``out[j, c]`` = the tap sums of ``grad[j]`` with every plane ``planes[c]``, for the ``out.shape[0] <= 2``
    outputs of ``out (outputs, C_g, T)``: two at once, one alone."""
    for c in range(planes.shape[0]):
        if out.shape[0] == 2:
            _taps_grad_weight2(out[0, c], out[1, c], grad[0], grad[1], planes[c], bases, runs, run_width)
        else:
            _taps_grad_weight(out[0, c], grad[0], planes[c], bases, runs, run_width)


def _forward(x, w, bases, runs, run_width, pos, width, seg_dst, seg_src, seg_len, step, size, groups,
             out):  # pragma: no cover - compiled
    """``out[b, k]`` from the taps of the group's filled planes ``buf_c`` (see :func:`run_arrays`).

    x (n, C, S) unpadded planes, w (K, C_g, T), out (n, K, P). Run ``r``
    accumulates ``acc[r*run_width + i] += w[k, c, t] * buf_c[bases[t] + runs[r] + i]``;
    output row ``q`` is then ``acc[pos[q] : pos[q] + width]``. One job per
    (image, group): its planes are filled once and serve all ``K_g`` outputs.
    """
    n = x.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    for job in prange(n * groups):
        b = job // groups
        g = job % groups
        buf = np.empty((c_g, size), dtype=out.dtype)
        for c in range(c_g):
            _fill(buf[c], x[b, g * c_g + c], seg_dst, seg_src, seg_len, step)
        if c_g == 1 and n_taps == 9 and runs.shape[0] == 1:  # depthwise 3x3: one pass per output
            for kk in range(k_g):
                _taps_forward9_rows(out[b, g * k_g + kk], buf[0], w[g * k_g + kk, 0], bases, pos, width)
            continue
        acc = np.empty((4, runs.shape[0] * run_width), dtype=out.dtype)
        for kk in range(0, k_g, 4):  # four outputs per pass over the planes
            k = g * k_g + kk
            block = min(4, k_g - kk)
            _taps_forward_block(acc[:block], buf, w[k:k + block], bases, runs, run_width)
            for j in range(block):
                _rows_out(out[b, k + j], acc[j], pos, width)


def _grad_input(gy, w, bases, runs, run_width, pos, width, seg_dst, seg_src, seg_len, step, size, groups, complete,
                out):  # pragma: no cover - compiled
    """Adjoint of :func:`_forward` in ``x``: ``gy (n, K, P)`` to ``out (n, C, S)`` (overwritten)."""
    n = gy.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    for job in prange(n * groups):
        b = job // groups
        g = job % groups
        acc = np.zeros((c_g, size), dtype=out.dtype)
        grad = np.zeros((3, runs.shape[0] * run_width), dtype=out.dtype)  # positions outside ``pos`` stay zero
        kk = 0
        while kk + 3 <= k_g:  # three outputs per pass over the planes
            k = g * k_g + kk
            for j in range(3):
                _rows_in(grad[j], gy[b, k + j], pos, width)
            for c in range(c_g):
                _taps_grad_input3(acc[c], grad[0], grad[1], grad[2], w[k, c], w[k + 1, c], w[k + 2, c], bases, runs,
                                  run_width)
            kk += 3
        for kk in range(kk, k_g):
            k = g * k_g + kk
            _rows_in(grad[0], gy[b, k], pos, width)
            for c in range(c_g):
                _taps_grad_input(acc[c], grad[0], w[k, c], bases, runs, run_width)
        for c in range(c_g):
            _unfill(out[b, g * c_g + c], acc[c], seg_dst, seg_src, seg_len, step, complete)


def _grad_weight(gy, x, bases, runs, run_width, pos, width, seg_dst, seg_src, seg_len, step, size, groups,
                 out):  # pragma: no cover - compiled
    """Adjoint of :func:`_forward` in ``w``, per image: ``out[b, k, c, t]`` is image ``b``'s share.

    gy (n, K, P), x (n, C, S), out (n, K, C_g, T); the caller sums over
    ``b``. One job per (image, group), as in the forward: each plane is
    filled once and serves every output of its group, and each entry is a
    dot product (a vectorised reduction) over the runs.
    """
    n = gy.shape[0]
    k_total, c_g = out.shape[1], out.shape[2]
    k_g = k_total // groups
    for job in prange(n * groups):
        b = job // groups
        g = job % groups
        buf = np.empty((c_g, size), dtype=out.dtype)
        for c in range(c_g):
            _fill(buf[c], x[b, g * c_g + c], seg_dst, seg_src, seg_len, step)
        grad = np.zeros((min(2, k_g), runs.shape[0] * run_width), dtype=out.dtype)  # positions outside ``pos`` stay zero
        for kk in range(0, k_g, 2):  # two outputs per pass over the planes
            k = g * k_g + kk
            block = min(2, k_g - kk)
            for j in range(block):
                _rows_in(grad[j], gy[b, k + j], pos, width)
            _taps_grad_weight_block(out[b, k:k + block], grad, buf, bases, runs, run_width)


# Images side by side in the lanes kernels: a multiple of the widest vector (16 float32 in AVX-512).
LANES = 16


@njit(**_FLAGS)
def _fill_lanes(buf, x, b0, m, ch, seg_dst, seg_src, seg_len, step):  # pragma: no cover - compiled
    """Plane ``ch`` of images ``b0 .. b0+m-1`` of ``x (n, C, S)``, padded and phase-split as in :func:`_fill`,
    into ``buf`` with the images interleaved: position ``p`` of image ``b0 + l`` at ``buf[p*LANES + l]``.
    Lanes ``m .. LANES-1`` (a last, partial block) are zero."""
    buf[:] = 0
    for s in range(seg_dst.shape[0]):
        o = seg_src[s]
        for i in range(seg_len[s]):
            dst = buf[(seg_dst[s] + i) * LANES:(seg_dst[s] + i + 1) * LANES]
            for lane in range(m):
                dst[lane] = x[b0 + lane, ch, o + i * step]


@njit(**_FLAGS)
def _unfill_lanes(out, b0, m, ch, buf, seg_dst, seg_src, seg_len, step, complete):  # pragma: no cover - compiled
    """Adjoint of :func:`_fill_lanes`: the real positions of ``buf`` back into planes ``out[b0 + l, ch]``."""
    for lane in range(m):
        plane = out[b0 + lane, ch]
        if not complete:  # input elements that no window reaches get a zero gradient
            plane[:] = 0
        for s in range(seg_dst.shape[0]):
            src = buf[seg_dst[s] * LANES + lane:]
            o = seg_src[s]
            for i in range(seg_len[s]):
                plane[o + i * step] = src[i * LANES]


@njit(**_FLAGS)
def _rows_out_lanes(out, b0, m, k, acc, pos, width):  # pragma: no cover - compiled
    """``out[b0 + l, k, q*width + j] = acc[(pos[q] + j)*LANES + l]``: :func:`_rows_out` for interleaved images."""
    for lane in range(m):
        row = out[b0 + lane, k]
        for q in range(pos.shape[0]):
            src = acc[pos[q] * LANES + lane:]
            for j in range(width):
                row[q * width + j] = src[j * LANES]


@njit(**_FLAGS)
def _rows_in_lanes(acc, gy, b0, m, k, pos, width):  # pragma: no cover - compiled
    """Adjoint of :func:`_rows_out_lanes` (``acc`` keeps its other positions and lanes)."""
    for lane in range(m):
        row = gy[b0 + lane, k]
        for q in range(pos.shape[0]):
            dst = acc[pos[q] * LANES + lane:]
            for j in range(width):
                dst[j * LANES] = row[q * width + j]


def _forward_lanes(x, w, bases, runs, run_width, pos, width, seg_dst, seg_src, seg_len, step, size, groups,
                   out):  # pragma: no cover - compiled
    """:func:`_forward` on ``LANES`` images at once, interleaved (:func:`_fill_lanes`).

    ``bases``, ``runs`` and ``run_width`` come scaled by ``LANES``. Every
    tap's run is then ``LANES`` times longer and a multiple of the vector
    width: on small planes (LeNet's 10x10 outputs) the per-image kernel
    spends most of its time entering short loops and in their scalar
    remainders, and this one does not. One job per (block of images, group).
    """
    n = x.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    blocks = (n + LANES - 1) // LANES
    for job in prange(blocks * groups):
        b0 = (job // groups) * LANES
        g = job % groups
        m = min(LANES, n - b0)
        buf = np.empty((c_g, size * LANES), dtype=out.dtype)
        for c in range(c_g):
            _fill_lanes(buf[c], x, b0, m, g * c_g + c, seg_dst, seg_src, seg_len, step)
        acc = np.empty((4, runs.shape[0] * run_width), dtype=out.dtype)
        for kk in range(0, k_g, 4):
            k = g * k_g + kk
            block = min(4, k_g - kk)
            _taps_forward_block(acc[:block], buf, w[k:k + block], bases, runs, run_width)
            for j in range(block):
                _rows_out_lanes(out, b0, m, k + j, acc[j], pos, width)


def _grad_input_lanes(gy, w, bases, runs, run_width, pos, width, seg_dst, seg_src, seg_len, step, size, groups,
                      complete, out):  # pragma: no cover - compiled
    """:func:`_grad_input` on ``LANES`` interleaved images at once (see :func:`_forward_lanes`)."""
    n = gy.shape[0]
    k_total, c_g, n_taps = w.shape
    k_g = k_total // groups
    blocks = (n + LANES - 1) // LANES
    for job in prange(blocks * groups):
        b0 = (job // groups) * LANES
        g = job % groups
        m = min(LANES, n - b0)
        acc = np.zeros((c_g, size * LANES), dtype=out.dtype)
        grad = np.zeros((3, runs.shape[0] * run_width), dtype=out.dtype)  # other positions and lanes stay zero
        kk = 0
        while kk + 3 <= k_g:  # three outputs per pass over the planes
            k = g * k_g + kk
            for j in range(3):
                _rows_in_lanes(grad[j], gy, b0, m, k + j, pos, width)
            for c in range(c_g):
                _taps_grad_input3(acc[c], grad[0], grad[1], grad[2], w[k, c], w[k + 1, c], w[k + 2, c], bases, runs,
                                  run_width)
            kk += 3
        for kk in range(kk, k_g):
            k = g * k_g + kk
            _rows_in_lanes(grad[0], gy, b0, m, k, pos, width)
            for c in range(c_g):
                _taps_grad_input(acc[c], grad[0], w[k, c], bases, runs, run_width)
        for c in range(c_g):
            _unfill_lanes(out, b0, m, g * c_g + c, acc[c], seg_dst, seg_src, seg_len, step, complete)


def _grad_weight_lanes(gy, x, bases, runs, run_width, pos, width, seg_dst, seg_src, seg_len, step, size, groups,
                       out):  # pragma: no cover - compiled
    """:func:`_grad_weight` on ``LANES`` interleaved images at once: ``out (blocks, K, C_g, T)`` holds each
    block's share (see :func:`_forward_lanes`); the caller sums over blocks."""
    n = gy.shape[0]
    k_total, c_g = out.shape[1], out.shape[2]
    k_g = k_total // groups
    blocks = out.shape[0]
    for job in prange(blocks * groups):
        blk = job // groups
        b0 = blk * LANES
        g = job % groups
        m = min(LANES, n - b0)
        buf = np.empty((c_g, size * LANES), dtype=out.dtype)
        for c in range(c_g):
            _fill_lanes(buf[c], x, b0, m, g * c_g + c, seg_dst, seg_src, seg_len, step)
        grad = np.zeros((min(2, k_g), runs.shape[0] * run_width), dtype=out.dtype)  # other positions and lanes stay zero
        for kk in range(0, k_g, 2):
            k = g * k_g + kk
            block = min(2, k_g - kk)
            for j in range(block):
                _rows_in_lanes(grad[j], gy, b0, m, k + j, pos, width)
            _taps_grad_weight_block(out[blk, k:k + block], grad, buf, bases, runs, run_width)


@njit(**_FLAGS)
def _window_max(buf, bases, length):  # pragma: no cover - compiled
    acc = np.empty(length, dtype=buf.dtype)
    first = buf[bases[0]:bases[0] + length]
    for i in range(length):
        acc[i] = first[i]
    for t in range(1, bases.shape[0]):
        src = buf[bases[t]:bases[t] + length]
        for i in range(length):
            v = src[i]
            a = acc[i]
            acc[i] = v if (v > a or v != v) else a
    return acc


def _max_pool_backward(x, gy, bases, rows, width, seg_dst, seg_src, seg_len, step, size, length, complete,
                       out):  # pragma: no cover - compiled
    """Gradient of max pooling at ``x (n, C, S)``: each plane is padded with ``-inf`` in cache, its window
    maxima recomputed over whole tap runs (:func:`run_arrays`), and each output's gradient goes to the first
    tap holding its maximum (NaN matches NaN, as NaN wins the maximum); then back through the padding
    (gradients that land in it are dropped)."""
    n, c_total = x.shape[0], x.shape[1]
    n_taps = bases.shape[0]
    for job in prange(n * c_total):
        b = job // c_total
        c = job % c_total
        buf = np.empty(size, dtype=out.dtype)
        _fill(buf, x[b, c], seg_dst, seg_src, seg_len, step, -np.inf)
        acc = _window_max(buf, bases, length)
        grad = np.zeros(length, dtype=out.dtype)  # positions outside the rows stay zero
        _rows_in(grad, gy[b, c], rows, width)
        done = np.zeros(length, dtype=np.bool_)
        g = np.zeros(size, dtype=out.dtype)
        zero = out.dtype.type(0)
        for t in range(n_taps):
            src = buf[bases[t]:bases[t] + length]
            dst = g[bases[t]:bases[t] + length]
            for i in range(length):  # branch-free, so it vectorises
                v = src[i]
                m = acc[i]
                hit = (v == m or (v != v and m != m)) and not done[i]
                dst[i] += grad[i] if hit else zero
                done[i] = done[i] or hit
        _unfill(out[b, c], g, seg_dst, seg_src, seg_len, step, complete)


@njit(parallel=True, nogil=True, cache=True, fastmath={"reassoc"})
def _nonfinite_probe(a):  # pragma: no cover - compiled
    """0 when every element of the flat ``a`` is finite, NaN otherwise (``inf * 0`` and ``NaN * 0`` are NaN)."""
    total = a.dtype.type(0)
    for i in prange(a.shape[0]):
        total += a[i] * a.dtype.type(0)
    return total


def all_finite(a: np.ndarray, parallel: bool = True) -> bool:
    """True when no element of the contiguous float array ``a`` is inf or NaN: one read-only pass, threaded
    (5x faster than NumPy's sum on a 6 MB activation) or, for small arrays, serial (ResNeXt's 4608 weights: 1.0
    us in a loop against 5.2 for NumPy's sum under ``np.errstate``, and 16 against 41-52 us right after the
    layer's memory-bound kernel; one-off scripts)."""
    return bool((_nonfinite_probe if parallel else _nonfinite_probe_serial)(a.reshape(-1)) == 0)


@intrinsic
def _take(typingctx, counter):
    """``counter[0]``, incremented by one in the same atomic step: the next job of a loop whose jobs the threads
    take as they come free (see :data:`DYNAMIC_JOBS`)."""
    sig = nbtypes.int64(counter)

    def codegen(context, builder, signature, args):
        ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")

    return sig, codegen


def dynamic_threads(parallel) -> int:
    """The ``dynamic`` argument of the kernels that deal their jobs either way (:data:`DYNAMIC_JOBS`): the
    number of threads where they run on all of them and take their jobs as they come free, else 0."""
    return get_num_threads() if DYNAMIC_JOBS and parallel else 0


def _compile(fn, parallel: bool):
    """A Numba dispatcher for ``fn``; each variant gets its own qualname, hence its own on-disk cache entry."""
    variant = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    variant.__qualname__ = f"{fn.__qualname__}_{'parallel' if parallel else 'serial'}"
    return njit(parallel=parallel, **_FLAGS)(variant)


_nonfinite_probe_serial = _compile(_nonfinite_probe.py_func, False)
_KERNELS = {
    name: (_compile(fn, False), _compile(fn, True))
    for name, fn in (("forward", _forward), ("grad_input", _grad_input), ("grad_weight", _grad_weight),
                     ("forward_lanes", _forward_lanes), ("grad_input_lanes", _grad_input_lanes),
                     ("grad_weight_lanes", _grad_weight_lanes))
}


def kernel(name: str, work: int):
    """The serial or parallel compiled kernel ``name`` for ``work`` multiply-adds."""
    return _KERNELS[name][work >= KERNEL_PARALLEL_MIN_WORK]


@lru_cache(maxsize=256)
def lanes_run_arrays(plan, whole: bool):
    """:func:`run_arrays` for the lanes kernels: ``bases``, ``runs`` and ``run_width`` scaled by ``LANES``
    (``pos`` and ``width`` count positions and stay as they are)."""
    bases, runs, run_width, pos, width = run_arrays(plan, whole)
    return bases * LANES, runs * LANES, run_width * LANES, pos, width


@lru_cache(maxsize=256)
def run_arrays(plan, whole: bool):
    """``(bases, runs, run_width, pos, width)``: where the kernels read and write the phase-split buffer.

    ``bases[t] = r_t * Q + off_t`` is where tap ``t`` starts. With
    ``whole``, each tap is ONE contiguous run over the ``L`` lattice
    positions, the few dropped columns per output row included (see
    :mod:`.windows`): long vector loops, 2-4x faster than one loop per row
    on LeNet C1 and the MobileNet depthwise layers (``python -m benchmarks``).
    The gradients can take them only when the data they multiply with the
    dropped columns' zeros is finite (``0 * inf`` is NaN). Otherwise one run
    per output row of ``width`` real outputs: nothing is multiplied that is
    not in the sum. ``pos[q]`` is where output row ``q`` sits in the runs'
    concatenation.
    """
    taps = np.asarray(plan.taps, dtype=np.int64).reshape(-1, 2)
    bases = np.ascontiguousarray(taps[:, 0] * plan.q_size + taps[:, 1])
    width = plan.out[-1]
    rows = np.ascontiguousarray(np.flatnonzero(lattice_mask(plan))[::width].astype(np.int64))
    if whole:
        return bases, np.zeros(1, np.int64), plan.length, rows, width
    return bases, rows, width, np.arange(rows.shape[0], dtype=np.int64) * width, width


@lru_cache(maxsize=256)
def fill_arrays(plan, size: tuple, pads: tuple, lanes: bool = False):
    """Kernel arguments for an unpadded input of spatial shape ``size`` zero-padded by ``pads``.

    Returns ``(seg_dst, seg_src, seg_len, step, buf_size, complete)``:

    * segments: buffer (the phase-split ``(R, Q)`` layout flattened to
      ``buf_size = R * Q``) run ``seg_dst[s] + [0, seg_len[s])`` holds the input
      elements ``seg_src[s] + step * [0, seg_len[s])`` (flat, unpadded);
      everything else in the buffer is zero padding or the round-up tail of
      a phase;
    * ``complete``: every input element lies in a segment (else the ones
      past the last window get a zero gradient).

    With stride 2 along rows of even width, ``step`` is :data:`SPLIT2` and
    ``seg_src`` indexes the plane split into its even and odd columns,
    where each segment is contiguous (:func:`_fill` splits the plane
    first); ``lanes`` asks for the plain layout, which the lanes kernels read.
    """
    q = plan.q_size
    in_strides = [math.prod(size[i + 1:]) for i in range(len(size))]
    dst, src, length = [], [], []
    for phase, r in enumerate(np.ndindex(*plan.stride)):
        ranges = []  # per axis: phase-grid positions u whose padded coordinate u*s + r is a real input element
        for ri, s, (lo, _), n, p, qn in zip(r, plan.stride, pads, size, plan.padded, plan.q_shape):
            first = max(0, -(-(lo - ri) // s))
            stop = min(qn, -(-(min(lo + n, p) - ri) // s))
            ranges.append((first, max(first, stop)))
        if any(a == b for a, b in ranges):
            continue
        counts = [b - a for a, b in ranges[:-1]]
        lead = np.indices(counts, dtype=np.int64).reshape(len(counts), math.prod(counts))
        d = np.full(lead.shape[1], phase * q + ranges[-1][0], dtype=np.int64)
        o = np.zeros(lead.shape[1], dtype=np.int64)
        for axis, (a, _) in enumerate(ranges[:-1]):
            u = lead[axis] + a
            d += u * plan.q_strides[axis]
            o += (u * plan.stride[axis] + r[axis] - pads[axis][0]) * in_strides[axis]
        o += ranges[-1][0] * plan.stride[-1] + r[-1] - pads[-1][0]
        dst.append(d)
        src.append(o)
        length.append(np.full(d.shape, ranges[-1][1] - ranges[-1][0], dtype=np.int64))
    cat = lambda parts: np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0, np.int64))  # noqa: E731
    seg_dst, seg_src, seg_len = cat(dst), cat(src), cat(length)
    complete = bool(seg_len.sum() == math.prod(size))
    step = plan.stride[-1]
    width = size[-1]
    if step == 2 and width % 2 == 0 and width and not lanes:
        # Read from the plane split into its even and odd columns (_split_columns): every segment, one
        # parity of one row, is then contiguous there.
        row, col = np.divmod(seg_src, width)
        seg_src = np.ascontiguousarray((col % 2) * (math.prod(size) // 2) + row * (width // 2) + col // 2)
        step = SPLIT2
    return seg_dst, seg_src, seg_len, step, plan.phases * q, complete


def _gather(x, bases, seg_dst, seg_src, seg_len, step, size, out):  # pragma: no cover - compiled
    """Patch matrix ``out (C, T, n, L)`` of ``x (n, C, S)`` (unpadded): ``out[c, t, b] = buf[bases[t] : +L]``
    where ``buf`` is plane ``x[b, c]`` padded and phase-split in cache (:func:`fill_arrays`).

    The batch sits next to the positions, so ``out.reshape(C*T, n*L)`` is the
    right-hand side of ONE GEMM for a whole chunk.
    """
    c_total, n_taps, n, length = out.shape
    for job in prange(n * c_total):
        c = job // n
        b = job % n
        buf = np.empty(size, dtype=out.dtype)
        _fill(buf, x[b, c], seg_dst, seg_src, seg_len, step)
        for t in range(n_taps):
            dst = out[c, t, b]
            src = buf[bases[t]:bases[t] + length]
            for i in range(length):  # not a slice assignment: Numba's checks for overlap cost 2x
                dst[i] = src[i]


_GATHER = (_compile(_gather, False), _compile(_gather, True))


def gather(x, plan, pads, out):
    """Compiled patch matrix ``(C, T, n, L)`` of ``x`` zero-padded by ``pads`` (see :func:`_gather`)."""
    bases = run_arrays(plan, True)[0]
    n, c = x.shape[:2]
    _GATHER[out.nbytes >= PARALLEL_MIN_WORK](x.reshape(n, c, -1), bases,
                                             *fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))[:-1], out)
    return out


def _gather_outputs(x, bases, rows, width, seg_dst, seg_src, seg_len, step, size, out):  # pragma: no cover
    """``out (n, C, T, P)``: for each tap, the input under every real output, row by row.

    ``rows`` are the lattice positions where the output rows (runs of
    ``width`` consecutive outputs along the last axis) start: each row is
    one contiguous slice of the padded, phase-split plane ``buf`` (filled in
    cache from the unpadded ``x (n, C, S)``), so the copy vectorises. This is
    the patch matrix of the real outputs only (no dropped columns), one image
    after another, as the forward GEMM wants it.
    """
    n, c_total, n_taps, count = out.shape
    for job in prange(n * c_total):
        b = job // c_total
        c = job % c_total
        buf = np.empty(size, dtype=out.dtype)
        _fill(buf, x[b, c], seg_dst, seg_src, seg_len, step)
        for t in range(n_taps):
            o = bases[t]
            dst = out[b, c, t]
            for r in range(rows.shape[0]):
                piece = dst[r * width:(r + 1) * width]
                start = o + rows[r]
                run = buf[start:start + width]
                for i in range(width):
                    piece[i] = run[i]


_GATHER_OUTPUTS = (_compile(_gather_outputs, False), _compile(_gather_outputs, True))


def gather_outputs(x, plan, pads, out):
    """Compiled patch matrix ``(n, C, T, P)`` of ``x`` zero-padded by ``pads``, over the real output positions
    (see :func:`_gather_outputs`)."""
    bases, _, _, rows, width = run_arrays(plan, True)
    n, c = x.shape[:2]
    _GATHER_OUTPUTS[out.nbytes >= PARALLEL_MIN_WORK](x.reshape(n, c, -1), bases, rows, width,
                                                     *fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))[:-1], out)
    return out


def _scatter(cols, bases, seg_dst, seg_src, seg_len, step, size, complete, out):  # pragma: no cover - compiled
    """Adjoint of the patch-matrix gather, unpadded on the way: ``cols (C, T, n, L)`` to ``out (n, C, S)``.

    For each plane, tap ``t``'s run is added at ``bases[t]`` of a phase-split
    buffer (the padded plane, see :func:`fill_arrays`), which the segments
    then copy out to the unpadded plane: no padded gradient, no phase merge
    and no crop ever reach memory.
    """
    c_total, n_taps, n, length = cols.shape
    for job in prange(n * c_total):
        c = job // n
        b = job % n
        acc = np.zeros(size, dtype=out.dtype)
        for t in range(n_taps):
            dst = acc[bases[t]:bases[t] + length]
            src = cols[c, t, b]
            for i in range(length):
                dst[i] += src[i]
        _unfill(out[b, c], acc, seg_dst, seg_src, seg_len, step, complete)


_SCATTER = (_compile(_scatter, False), _compile(_scatter, True))


def _scatter_outputs(cols, bases, rows, width, seg_dst, seg_src, seg_len, step, size, complete,
                     out):  # pragma: no cover - compiled
    """Adjoint of :func:`_gather_outputs`, unpadded on the way: ``cols (n, C, T, P)`` to ``out (n, C, S)``
    (as :func:`_scatter`, over the real output positions only)."""
    n, c_total, n_taps, count = cols.shape
    for job in prange(n * c_total):
        b = job // c_total
        c = job % c_total
        acc = np.zeros(size, dtype=out.dtype)
        for t in range(n_taps):
            o = bases[t]
            src = cols[b, c, t]
            for r in range(rows.shape[0]):
                piece = src[r * width:(r + 1) * width]
                start = o + rows[r]
                dst = acc[start:start + width]
                for i in range(width):
                    dst[i] += piece[i]
        _unfill(out[b, c], acc, seg_dst, seg_src, seg_len, step, complete)


_SCATTER_OUTPUTS = (_compile(_scatter_outputs, False), _compile(_scatter_outputs, True))


def scatter_outputs(cols, plan, in_shape, pads, out):
    """``out (n, C, *S)`` = the adjoint of :func:`gather_outputs` applied to ``cols (n, C, T, P)``, then of the
    zero padding ``pads``."""
    bases, _, _, rows, width = run_arrays(plan, True)
    seg_dst, seg_src, seg_len, step, size, complete = fill_arrays(plan, tuple(in_shape[2:]), tuple(pads))
    n, c = out.shape[:2]
    _SCATTER_OUTPUTS[cols.nbytes >= PARALLEL_MIN_WORK](cols, bases, rows, width, seg_dst, seg_src, seg_len, step,
                                                       size, complete, out.reshape(n, c, -1))
    return out
_POOL_BACKWARD = (_compile(_max_pool_backward, False), _compile(_max_pool_backward, True))


def _max_pool_backward_tiled(x, gy, kh, kw, out):  # pragma: no cover - compiled
    """:func:`_max_pool_backward` for 2-D windows that tile the input (stride = kernel, no padding, no
    dilation: LeNet's and most CNNs' 2x2 pools): one scan per window, in tap order, keeps the first maximum
    (the first NaN, if any), which then takes the window's gradient; the rest of the plane is zero. 1.3-2.5x
    faster than the general kernel on LeNet's pools.
    x, out (n, C, H, W); gy (n, C, OH, OW)."""
    n, c_total = x.shape[0], x.shape[1]
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    zero = out.dtype.type(0)
    for job in prange(n * c_total):
        b = job // c_total
        c = job % c_total
        plane = x[b, c]
        grad = out[b, c]
        for i in range(grad.shape[0]):
            row = grad[i]
            for j in range(row.shape[0]):
                row[j] = zero
        for oh in range(oh_n):
            for ow in range(ow_n):
                bi, bj = oh * kh, ow * kw
                best = plane[bi, bj]
                if best == best:  # a NaN first in its window wins at once
                    for i in range(oh * kh, oh * kh + kh):
                        for j in range(ow * kw, ow * kw + kw):
                            v = plane[i, j]
                            if v > best or v != v:
                                best, bi, bj = v, i, j
                                if v != v:
                                    break
                        if best != best:
                            break
                grad[bi, bj] = gy[b, c, oh, ow]


_POOL_BACKWARD_TILED = (_compile(_max_pool_backward_tiled, False), _compile(_max_pool_backward_tiled, True))


def max_pool_backward(x, gy, plan, pads, out):
    """Gradient ``out (n, C, *S)`` of max pooling ``x (n, C, *S)`` padded with ``-inf`` by ``pads``, for
    ``gy (n, C, *O)`` (see :func:`_max_pool_backward`; 1.3-2.8x faster than NumPy on LeNet's and a ResNet
    stem's pools). 2-D windows that tile the input take :func:`_max_pool_backward_tiled`. The forward stays
    in NumPy: its per-tap ``np.maximum`` over strided views is as fast."""
    n, c = x.shape[:2]
    if out.size == 0:  # no input elements: nothing to send the gradient to
        return out
    if (len(plan.kernel) == 2 and plan.kernel == plan.stride and plan.dilation == (1, 1)
            and not any(lo or hi for lo, hi in pads)):
        _POOL_BACKWARD_TILED[x.size * 4 >= PARALLEL_MIN_WORK](
            np.ascontiguousarray(x), np.ascontiguousarray(gy), plan.kernel[0], plan.kernel[1], out)
        return out
    bases, _, _, rows, width = run_arrays(plan, True)
    *segs, complete = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))
    _POOL_BACKWARD[n * c * plan.n_taps * plan.length >= PARALLEL_MIN_WORK](
        np.ascontiguousarray(x).reshape(n, c, -1), np.ascontiguousarray(gy).reshape(n, c, -1), bases, rows, width,
        *segs, plan.length, complete, out.reshape(n, c, -1))
    return out


def scatter(cols, plan, in_shape, pads, out):
    """``out (n, C, *S)`` = the adjoint of :func:`gather` applied to ``cols (C, T, n, L)``, then of the zero
    padding ``pads`` (see :func:`_scatter`)."""
    bases = run_arrays(plan, True)[0]
    seg_dst, seg_src, seg_len, step, size, complete = fill_arrays(plan, tuple(in_shape[2:]), tuple(pads))
    n, c = out.shape[:2]
    _SCATTER[cols.nbytes >= PARALLEL_MIN_WORK](cols, bases, seg_dst, seg_src, seg_len, step, size, complete,
                                               out.reshape(n, c, -1))
    return out


def _place(part, offsets, out):  # pragma: no cover - compiled
    """``out[j, offsets[i]] = part[j, i]`` for every plane ``j``: one plane's worth of positions a time."""
    for j in prange(part.shape[0]):
        src = part[j]
        dst = out[j]
        for i in range(offsets.shape[0]):
            dst[offsets[i]] = src[i]


_PLACE = (_compile(_place, False), _compile(_place, True))



def place(part: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """``out (P, S)[:, offsets] = part (P, M)``, compiled and threaded: the positions of one stride phase
    written into whole planes (NumPy's assignment through two strided axes took 2-3 ms for 1M elements)."""
    _PLACE[int(part.size >= COPY_PARALLEL_MIN)](part, offsets, out)
