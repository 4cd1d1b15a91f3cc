"""Depthwise and grouped 3x3 convolutions in one pass over each plane: no padded copy, no patch matrix.

Depthwise layers of stride 1 or 2: forward and weight gradient (:func:`make_plane_kernel`), and the
stride-2 input gradient (:func:`make_grad_input2_kernel`; the stride-1 one is a forward of the flipped
kernel, see :mod:`.gemm`). Layers with a few channels per group (ResNeXt's 4 x 4): the stride-1 forward,
four outputs at a time, by Winograd's F(2, 3) down the rows (:func:`make_group_kernel`).

The direct kernels of :mod:`.direct` first copy each plane into a padded,
phase-split buffer, then sum the taps row by row, each output row a
Numba loop of its own; on MobileNet's 56 x 56 planes the loops' set-up
(nine slices, their overlap checks) cost more than their 3-4 vectors of
arithmetic. Here one compiled kernel per plane (:func:`make_plane_kernel`,
LLVM IR with explicit vector types, like :mod:`.implicit`'s tiles) reads
the unpadded input where it lies:

* output row ``q``, columns ``j .. j + lanes - 1``: for each kernel row
  ``r`` whose input row exists, three vector loads at the column shifts
  ``c * dw - pl`` (with stride 2, the even lanes of two loads each; with
  stride 2 and dilation 1 along the row, one pair of loads for all three
  kernel columns, its even and odd lanes, the odd ones moved on by a lane
  for the left column), each multiplied by its broadcast weight; one
  accumulator per kernel row (three short chains instead of one of
  nine); with stride and dilation 1
  down the rows, several output rows at a time (:func:`plane_rows`: four,
  but two for the weight gradient with 256-bit vectors), each input row's
  loads serving all the
  rows it reaches (18 loads for four vectors instead of 36; two rows
  against one: MobileNet's 56-wide rows 4.5-4.8 against 6.5-9.5 ns per
  vector in cache, one thread);
* where a load would cross the row's ends (the first and last vectors of
  a row: the zero padding), a masked load reads only the lanes inside
  the row and zeros the others;
* a pass whose input rows and columns all lie inside the plane (one test
  per pass) runs as straight code, without the per-row and per-load tests
  of the edges, the same sums in the same order: with AVX2 on Zen 3, the
  suite's layers, kernel alone, two threads, best of 7 in each of 9
  alternating rounds, fastest and median round, ms, before / after:
  stride-1 forward 2.14, 2.16 / 1.63, 1.79, weight gradient 2.47, 2.81 /
  1.83, 2.07; stride 2 3.35, 3.88 / 3.00, 3.24 and 2.52, 2.83 / 2.20,
  2.43; faster in 9 of 9 rounds each (one thread, one image's planes in
  L3: 7.3 against 4.0 ns per output vector); a pass whose rows all lie
  inside but whose columns reach a row's end tests no row and masks every
  load (no branch): stride 1, kernel alone, 1.00, 1.03 / 0.81, 0.89 ms
  forward and 0.98, 1.01 / 0.80, 0.83 weight gradient (8 and 9 of 9
  rounds; 3.45-3.5 ns per vector in L3), stride 2 even;
* with 512-bit vectors, a row's last vector, where it holds at most half
  a vector of outputs (56-wide rows: 8 of 16 lanes), runs on 256-bit
  vectors, which cost half as much on Zen 4 (its 512-bit operations are
  two 256-bit ones);
* a row's vectors go first to last, the order in which the memory
  prefetches (:meth:`_Vectors.each_vector`), the half vector that ends
  a row stored under a mask at the row's end; where a whole vector
  passes the row's end, the row goes last to first instead and the
  forward stores whole vectors, the lanes past the end landing on the
  next row's first outputs, which are written after them, and only a
  vector that would pass the plane's end is stored under a mask;
* the weight gradient keeps nine vector sums over the plane, each the
  output gradient's vector times the tap's input vector, and adds their
  lanes at the end: one image's share per job, summed over the batch
  after.

Every depthwise output is the sum of the nine products with the input
where it exists, so inf and NaN spread exactly as in the reference; only
the order of the additions differs from the other strategies.

The grouped kernel (:func:`make_group_kernel`) loads each input vector
once for four outputs and, on row pairs, computes them by Winograd's
F(2, 3) down the rows (Lavin & Gray, 2016): from the four input rows
``d0 .. d3`` under two output rows, per kernel column,
``t = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)``; each output sums
``M_i += u_i t_i`` over its group's channels and the kernel columns,
``u = G g`` the kernel column's three taps transformed
(:func:`winograd_rows`), and its two rows are ``M0 + M1 + M2`` and
``M1 - M2 - M3``. That is 4 multiply-adds per output, channel and
column for the two rows where the direct sums take 6, plus 4 additions
shared by the block's four outputs; on Zen 4 the additions run on two
pipes of their own beside the two of the multiply-adds. One image of
ResNeXt's layer (32 groups of 4 x 4 on 56 x 56 planes), one thread, in
cache: 0.25-0.27 against 0.33-0.35 ms (one-off script; in the suite the
pass is bound by memory, see BENCHMARKS.md).

Rounding. Each product ``x_p * w_q`` reaches an output with a total
weight of at most ``WINOGRAD_ROWS_GROWTH = 2`` (the largest
``sum_i |A^T[r, i]| |G[i, q]| |B^T[i, p]|``), rounded in the input
transform (1 step), the kernel transform (1, computed in float64), the
sum over the ``3 C_g`` channel and column terms, and the output transform
(2). Hence the bound, checked by ``tests/test_conv.py`` against the
float64 reference::

    |y - y_exact| <= (3 C_g + 4) * WINOGRAD_ROWS_GROWTH * eps * sum |x| |w|

over each output's ``9 C_g`` terms: for ResNeXt's ``C_g = 4``, 32 against
the patch-matrix GEMM's ``9 C_g = 36``. A transform would spread inf and
NaN over both rows (and overflow where the direct sums do not), so a row
pair whose outputs are not all finite (their sum minus itself is NaN) is
computed again by the direct sums: inf and NaN spread exactly as in the
reference, at the direct kernel's speed.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .direct import _compile
from .implicit import VECTOR_BYTES, prefetch_line

KH = KW = 3
# Input rows below a row pair's first at which the grouped kernel asks for the next lines (the two rows of three
# pairs later): ResNeXt's layer, batch 8, two threads, 0.97-1.04 ms against 1.04-1.20 without, median of 15
# (one-off script; 2 to 40 rows ahead were within 5% of each other).
GROUP_PREFETCH_ROWS = 8


def plane_rows(sh: int, vector_bytes: int, grad_weight: bool = False) -> int:
    """Output rows per pass of the depthwise kernel (:func:`make_plane_kernel`) where the dilation down the
    rows is 1: each input row loaded serves every output row of the pass that it reaches, so a pass of ``m`` rows
    loads ``3 + (m - 1) * sh`` input rows instead of ``3 m``.

    With 512-bit vectors (Zen 4), four at stride 1. One thread, MobileNet's 56 x 56 planes in L3, ns per plane,
    2 / 4 / 8 rows: forward 1040-1168 / 944-972 / 1253-1276, weight gradient 1201-1286 / 963-998 / 1107-1140
    (at 8 the accumulators no longer fit the 32 vector registers). The suite's layer (batch 8, two threads, bound
    by the memory), kernel alone, 2 / 4 rows: forward 0.64-0.71 / 0.60-0.69 ms, weight gradient 0.75-0.78 /
    0.61-0.66 (leaving out the noisiest stretches' calls, up to 1.9 ms).

    One row at a time at stride 2, as before: on planes in cache several rows per pass made the forward faster
    (112 x 112 planes, 1 / 2 / 4 rows: 2849-2894 / 2609-2716 / 2516-2560 ns) but the weight gradient no faster
    (2901-3077 / 2648-2651 / 2952-2973), and on the suite's layer, whose 38.5 MB input streams from memory, the
    noise of that stretch (1.3-4.3 ms for one kernel) hid any difference.

    With 256-bit vectors (16 registers), four at stride 1 for the forward, two for the weight gradient
    (``grad_weight``). Zen 3, the suite's layer, kernel alone, best of 5 in each of 9 alternating rounds, fastest
    and median round, ms, 1 / 2 / 4 rows: forward 1.80, 1.85 / 1.41, 1.49 / 1.31, 1.42, weight gradient 2.09,
    2.16 / 1.59, 1.66 / 3.32, 3.36; in the suite's passes (one process, two runs of 9 alternating rounds), 2 / 4
    rows: forward 2.16-2.40, 2.43-2.56 / 1.79-2.28, 2.30-2.45, input gradient (a forward, flipped) 2.42-2.54,
    2.65-2.71 / 1.66-2.21, 2.43-2.63, four rows faster in 12 and 14 of the 18 rounds."""
    if sh != 1:
        return 1
    return 2 if vector_bytes < 64 and grad_weight else 4


# Winograd's F(2, 3) down the rows of the grouped kernel (make_group_kernel): two output rows y = A^T [(G g) (.)
# (B^T d)] from four input rows d and three kernel rows g. The matrices give the growth below; their rows are
# written out in winograd_rows (G) and in the kernel (B^T, A^T).
_ROWS_G = np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]])
_ROWS_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
_ROWS_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)
# The largest weight with which one product x_p * w_q reaches an output: 2 (see the module doc).
WINOGRAD_ROWS_GROWTH = float(np.einsum("ri,iq,ip->rpq", np.abs(_ROWS_AT), np.abs(_ROWS_G), np.abs(_ROWS_BT)).max())


class _Vectors:
    """The IR helpers of one kernel's code generation: vector types, splats, and the masked loads and stores
    at the ends of the rows."""

    def __init__(self, context, builder, dtype, vector_bytes: int, row_end: bool = False):
        self.context = context
        self.row_end = row_end  # stores stop at the row's end (see store)
        self.b = builder
        self.lanes = vector_bytes // (4 if dtype == types.float32 else 8)
        self.vt = ir.VectorType(context.get_value_type(dtype), self.lanes)
        self.i64, self.i32 = ir.IntType(64), ir.IntType(32)
        self.it = ir.VectorType(self.i32, self.lanes)  # lane positions within a row (far shorter than 2**31)
        self.align = 4 if dtype == types.float32 else 8
        suffix = f"v{self.lanes}{'f32' if dtype == types.float32 else 'f64'}"
        vt, i32, mt = self.vt, self.i32, ir.VectorType(ir.IntType(1), self.lanes)
        module = builder.module
        self.fma = cgutils.get_or_insert_function(module, ir.FunctionType(vt, [vt] * 3), f"llvm.fma.{suffix}")
        self.mload = cgutils.get_or_insert_function(
            module, ir.FunctionType(vt, [vt.as_pointer(), i32, mt, vt]), f"llvm.masked.load.{suffix}.p0")
        self.mstore = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, mt]), f"llvm.masked.store.{suffix}.p0")
        self.zero = ir.Constant(vt, None)
        self.lane = ir.Constant(self.it, list(range(self.lanes)))

    def const(self, v):
        return ir.Constant(self.i64, v)

    def data(self, array_type, value):
        """The data pointer of an array argument."""
        return self.context.make_array(array_type)(self.context, self.b, value).data

    def splat(self, value, ty=None):
        """``value`` in every lane (of ``ty``, the float vector by default; an i64 goes to the lane positions)."""
        if ty is None:
            ty = self.vt
        elif value.type == self.i64:
            value = self.b.trunc(value, self.i32)
        undef = ir.Constant(ty, ir.Undefined)
        zeros = ir.Constant(ir.VectorType(self.i32, self.lanes), [0] * self.lanes)
        return self.b.shuffle_vector(self.b.insert_element(undef, value, ir.Constant(self.i32, 0)), undef, zeros)

    def fmadd(self, a, x, acc):
        return self.b.call(self.fma, [a, x, acc])

    def load(self, ptr, col, count, width, used=None, inside=False, masked=False):
        """The ``count // lanes`` vectors from ``ptr`` (column ``col`` of a row of ``width``): whole where they
        lie in the row, else masked, zeros for the columns outside it (the padding). With ``used`` (an i32),
        only the first ``used`` elements are read, the others zeros: where the output gradient's vector has
        zeros past its row's end, the input must have zeros there too (``0 * inf`` is NaN). With ``inside``
        the caller knows that they lie in the row and that ``used`` is at least ``count``: plain loads, no
        test; with ``masked``, masked loads, no test (the same values: the passes at a row's ends)."""
        b, vt = self.b, self.vt
        pointers = [b.bitcast(b.gep(ptr, [self.const(self.lanes * v)]), vt.as_pointer())
                    for v in range(count // self.lanes)]
        if inside:
            return [b.load(p, align=self.align) for p in pointers]
        if masked:
            return self._masked_loads(pointers, col, width, used)
        whole = b.and_(b.icmp_signed(">=", col, self.const(0)),
                       b.icmp_signed("<=", b.add(col, self.const(count)), width))
        if used is not None:
            whole = b.and_(whole, b.icmp_signed(">=", used, ir.Constant(self.i32, count)))
        with b.if_else(whole, likely=True) as (plain, edge):
            with plain:
                got = [b.load(p, align=self.align) for p in pointers]
                bb_plain = b.block
            with edge:
                masked = self._masked_loads(pointers, col, width, used)
                bb_edge = b.block
        vectors = []
        for a, m in zip(got, masked):
            phi = b.phi(vt)
            phi.add_incoming(a, bb_plain)
            phi.add_incoming(m, bb_edge)
            vectors.append(phi)
        return vectors

    def _masked_loads(self, pointers, col, width, used):
        """:meth:`load`'s vectors under masks: the lanes at columns in ``[0, width)`` (and below ``used``)."""
        b = self.b
        cols = b.add(self.splat(col, self.it), self.lane)
        vectors = []
        for v, p in enumerate(pointers):
            shift = self.splat(ir.Constant(self.i32, self.lanes * v), self.it)
            at = b.add(cols, shift)
            mask = b.and_(b.icmp_signed(">=", at, self.splat(ir.Constant(self.i32, 0), self.it)),
                          b.icmp_signed("<", at, self.splat(width, self.it)))
            if used is not None:
                mask = b.and_(mask, b.icmp_signed("<", b.add(self.lane, shift), self.splat(used, self.it)))
            vectors.append(b.call(self.mload, [p, ir.Constant(self.i32, self.align), mask, self.zero]))
        return vectors

    def each_vector(self, half, ho, wo, dh, most, vector):
        """Emit ``vector(u, q, j, rows)`` for every output vector of an ``ho x wo`` plane: rows ``q`` ``most``
        at a time (a power of two), then in halves of that for the rest, where the dilation down the rows ``dh``
        is 1, else one at a time. A row's last vector, where it holds at most half a vector of outputs (56-wide
        rows: 8 of 16 lanes), comes last and in vectors of ``half`` (with 512-bit vectors; ``None`` otherwise):
        on Zen 4 two 256-bit operations cost as much as one 512-bit; its stores stop at the row's end
        (:meth:`store`). The other vectors ``j`` come first to last, unless the last of them has lanes past its
        row's end (28-wide rows: 12 of 16 lanes): then last to first, so that those lanes land on the next row's
        first outputs, which a later vector writes. First to last is the order the memory prefetches in: the
        suite's stride-2 depthwise forward took 1.03-1.22 ms against 1.43-2.04 last to first (two threads,
        batch 8, kernel alone, best of 10 in ten alternating rounds; one-off script, see BENCHMARKS.md)."""
        b, const, lanes = self.b, self.const, self.lanes
        full = b.sdiv(wo, const(lanes))  # whole vectors per output row
        count = b.sdiv(b.add(wo, const(lanes - 1)), const(lanes))  # vectors per output row
        left = b.sub(wo, b.mul(full, const(lanes)))
        short = b.and_(b.icmp_signed(">", left, const(0)), b.icmp_signed("<=", left, const(lanes // 2)))
        whole = count if half is None else b.select(short, full, count)
        spill = b.icmp_signed(">", b.mul(whole, const(lanes)), wo)  # the last of the ``whole`` vectors passes the end

        def rows_of(first, stop, rows):
            with cgutils.for_range_slice(b, first, stop, const(rows), inc=True) as (q, _):
                with cgutils.for_range(b, whole) as vectors:
                    i = vectors.index
                    at = b.select(spill, b.sub(b.sub(whole, const(1)), i), i)
                    vector(self, q, b.mul(at, const(lanes)), rows)
                if half is not None:
                    with b.if_then(short):
                        vector(half, q, b.mul(full, const(lanes)), rows)

        first = const(0)
        rows = most
        while rows > 1:
            stop = b.select(b.icmp_signed("==", dh, const(1)), b.mul(b.sdiv(ho, const(rows)), const(rows)), first)
            rows_of(first, stop, rows)
            first, rows = stop, rows // 2
        rows_of(first, ho, 1)

    def store(self, value, base, index, size, col, width, inside=False):
        """``value`` to ``base[index:]`` (column ``col`` of a row of ``width``, in a plane of ``size``): a whole
        vector where it fits in the plane, the lanes past the row's end landing on the next row's first
        elements, which are written after it (Zen 4's masked stores are slow); the plane's last elements
        under a mask. With ``row_end`` (the half vectors that end the rows, see :meth:`each_vector`), under a
        mask wherever the vector passes its row's end. With ``inside`` the caller knows that the vector lies
        in its row: a plain store, no test."""
        b = self.b
        ptr = b.bitcast(b.gep(base, [index]), self.vt.as_pointer())
        if inside:
            b.store(value, ptr, align=self.align)
            return
        if self.row_end:
            room = b.icmp_signed("<=", b.add(col, self.const(self.lanes)), width)
        else:
            room = b.icmp_signed("<=", b.add(index, self.const(self.lanes)), size)
        with b.if_else(room, likely=True) as (plain, edge):
            with plain:
                b.store(value, ptr, align=self.align)
            with edge:
                mask = b.icmp_signed("<", b.add(self.splat(col, self.it), self.lane), self.splat(width, self.it))
                b.call(self.mstore, [value, ptr, ir.Constant(self.i32, self.align), mask])


def make_plane_kernel(kh: int, kw: int, sh: int, sw: int, vector_bytes: int, grad_weight: bool = False,
                      rows: int | None = None):
    """A Numba intrinsic ``k(x, xoff, h, w, wts, woff, y, yoff, ho, wo, pt, pl, dh, dw)`` over one plane.

    The plane's ``kh x kw`` cross-correlation with strides ``sh, sw`` (1 or 2), zero-padded by ``pt`` rows
    and ``pl`` columns before it, sums ``wts[woff + r * kw + c] * x[xoff + xr * w + xc]`` into output
    ``(q, i)``, ``q < ho``, ``i < wo``, over the taps with ``xr = q * sh + r * dh - pt`` in ``[0, h)`` and
    ``xc = i * sw + c * dw - pl`` in ``[0, w)``. The forward writes ``y[yoff + q * wo + i]``; with
    ``grad_weight``, ``y`` holds the output's gradient and the kernel writes the plane's share of the weight
    gradient, ``wts[woff + r * kw + c] = sum_{q, i} y[yoff + q * wo + i] * x[...]``.

    Output columns are taken ``lanes`` at a time; with stride 2 the input columns of a vector are the even
    lanes of two vector loads, and where ``dw`` is 1 one pair of loads serves all three kernel columns
    (``paired_taps``; on one image's 112 x 112 planes in cache, one thread, forward 2.62-2.74 against 3.64-3.82 us
    per plane, weight gradient 1.85-2.77 against 2.81-4.05, the same sums in the same order; on the suite's
    layer, whose input streams from memory, within the noise). Output rows are taken ``rows`` at a time (a power
    of two; by default :func:`plane_rows`) where the dilation down the rows is 1. ``x``, ``wts`` and ``y`` are
    1-D arrays of one float dtype; nothing is bounds-checked, and nothing outside the planes is read or written.
    """
    assert sh in (1, 2) and sw in (1, 2)
    rows = plane_rows(sh, vector_bytes, grad_weight) if rows is None else rows
    assert rows >= 1 and rows & (rows - 1) == 0

    @intrinsic
    def plane(typingctx, x, xoff, h, w, wts, woff, y, yoff, ho, wo, pt, pl, dh, dw):
        ip = types.intp
        sig = types.void(x, ip, ip, ip, wts, ip, y, ip, ip, ip, ip, ip, ip, ip)

        def codegen(context, builder, signature, args):
            x_arr, xoff, h, w, w_arr, woff, y_arr, yoff, ho, wo, pt, pl, dh, dw = args
            dtype = signature.args[0].dtype
            v = _Vectors(context, builder, dtype, vector_bytes)
            const, b = v.const, builder
            half = _Vectors(context, builder, dtype, vector_bytes // 2, row_end=True) if vector_bytes > 32 else None
            widths = [v] if half is None else [v, half]

            x_ptr = b.gep(v.data(signature.args[0], x_arr), [xoff])
            y_ptr = b.gep(v.data(signature.args[6], y_arr), [yoff])
            w_ptr = b.gep(v.data(signature.args[4], w_arr), [woff])
            taps = [(r, c) for r in range(kh) for c in range(kw)]
            evens, odds = ({u: ir.Constant(ir.VectorType(u.i32, u.lanes), list(range(first, 2 * u.lanes, 2)))
                            for u in widths} for first in (0, 1))
            if grad_weight:
                sums = {u: {t: cgutils.alloca_once_value(b, u.zero) for t in taps} for u in widths}
            else:
                scalars = {(r, c): b.load(b.gep(w_ptr, [const(r * kw + c)])) for r, c in taps}
                weights = {u: {t: u.splat(scalars[t]) for t in taps} for u in widths}
                accs = {u: [[cgutils.alloca_once_value(b, u.zero) for _ in range(kh)] for _ in range(rows)]
                        for u in widths}

            def paired_taps(u, row, j, used, inside, masked):
                """The three kernel columns' input vectors of output columns ``j ..`` at stride 2 with dilation 1
                along the row: one pair of loads from column ``2 j - pl + 1``, its even lanes the middle column's
                and its odd lanes the right one's; the left column's are the odd lanes one lane on, with column
                ``2 j - pl`` (or the padding's zero) in lane 0: two vector loads and one scalar where the spread
                taps take six vector loads, the same values in the same lanes."""
                base = b.add(b.sub(b.mul(j, const(2)), pl), const(1))
                pair = u.load(b.gep(row, [base]), base, 2 * u.lanes, w, used, inside, masked)
                middle = b.shuffle_vector(pair[0], pair[1], evens[u])
                right = b.shuffle_vector(pair[0], pair[1], odds[u])
                col = b.sub(base, const(1))
                if inside:
                    first = b.load(b.gep(row, [col]))
                else:
                    there = b.and_(b.icmp_signed(">=", col, const(0)), b.icmp_signed("<", col, w))
                    first = b.load(b.gep(row, [b.select(there, col, const(0))]))
                    first = b.select(there, first, ir.Constant(first.type, 0))
                undef = ir.Constant(u.vt, ir.Undefined)
                left = b.shuffle_vector(right, b.insert_element(undef, first, ir.Constant(u.i32, 0)),
                                        ir.Constant(ir.VectorType(u.i32, u.lanes), [u.lanes, *range(u.lanes - 1)]))
                if used is not None:  # the lanes past the row's end meet zeros of the gradient: zeros, not inputs
                    left = b.select(b.icmp_signed("<", b.add(u.lane, u.lane), u.splat(used, u.it)), left, u.zero)
                return [left, middle, right]

            def vector(u, q, j, outputs, paired=False):
                """Output vector ``(q, j)`` in vectors of ``u`` and, with ``outputs`` > 1 (dilation 1 down the
                rows), also ``(q + 1, j)`` .. ``(q + outputs - 1, j)``: each input row's loads serve the kernel
                rows of every output row they reach (see :func:`plane_rows`). With ``paired``, each input row's taps
                come from ``paired_taps``. Where every input row and column that the vectors reach lies in the
                plane and the output vectors in their rows (MobileNet's 56 x 56 planes: 60 of 98 passes of four
                rows), one straight run of plain loads, multiply-adds and stores (``inside``); where only the
                rows do, the same with masked loads; elsewhere each row, load and store tests the plane's edges
                (the padding)."""
                step = dh if outputs == 1 else const(1)  # several rows per pass only with dilation 1 (each_vector)
                last = kh - 1 + (outputs - 1) * sh  # the last input row, counted from output row q's first
                top = b.sub(b.mul(q, const(sh)), pt)
                left = b.sub(b.mul(j, const(sw)), pl)
                rows_in = b.and_(b.icmp_signed(">=", top, const(0)),
                                 b.icmp_signed("<", b.add(top, b.mul(const(last), step)), h))
                cols_in = b.and_(b.and_(b.icmp_signed(">=", left, const(0)),
                                        b.icmp_signed("<=", b.add(left, b.add(b.mul(const(kw - 1), dw),
                                                                              const(sw * u.lanes))), w)),
                                 b.icmp_signed("<=", b.add(j, const(u.lanes)), wo))
                with b.if_else(rows_in, likely=True) as (rows_there, rows_edge):
                    with rows_there:
                        with b.if_else(cols_in, likely=True) as (plain, edge):
                            with plain:
                                vector_body(u, q, j, outputs, paired, True, True, top, step)
                            with edge:
                                vector_body(u, q, j, outputs, paired, False, True, top, step)
                    with rows_edge:
                        vector_body(u, q, j, outputs, paired, False, False, top, step)

            def vector_body(u, q, j, outputs, paired, inside, rows_in, top, step):
                """:func:`vector`'s sums, the same sums in the same order: with ``inside``, no edge tested; with
                ``rows_in`` only, the rows not tested and every load masked (the passes at a row's ends: 24 more
                of the 98 on MobileNet's planes); else every row and load tested. ``top`` is the first input
                row's index and ``step`` the step between input rows, as :func:`vector` found them."""
                index = b.add(b.mul(q, wo), j)
                used = g = None
                masked = rows_in and not inside
                if grad_weight:  # the gradient's vectors (zeros past their row's end) and the inputs they meet
                    g = [u.load(b.gep(y_ptr, [b.add(index, b.mul(const(o), wo))]), j, u.lanes, wo, inside=inside,
                                masked=masked)[0] for o in range(outputs)]
                    if not inside:
                        used = b.mul(b.sub(wo, j), const(sw))
                        used = b.trunc(b.select(b.icmp_signed("<", used, const(sw * u.lanes)), used,
                                                const(sw * u.lanes)), u.i32)
                for o in range(outputs):
                    for r in range(kh):
                        if not grad_weight:
                            b.store(u.zero, accs[u][o][r])
                for k in range(kh + (outputs - 1) * sh):  # input rows, from output row q's first
                    xr = b.add(top, b.mul(const(k), step))

                    def taps():
                        row = b.gep(x_ptr, [b.mul(xr, w)])
                        if paired:
                            return paired_taps(u, row, j, used, inside, masked)
                        vectors = []
                        for c in range(kw):
                            col = b.sub(b.add(b.mul(j, const(sw)), b.mul(const(c), dw)), pl)
                            got = u.load(b.gep(row, [col]), col, sw * u.lanes, w, used, inside, masked)
                            vectors.append(got[0] if sw == 1 else b.shuffle_vector(got[0], got[1], evens[u]))
                        return vectors

                    if rows_in:
                        add_row(u, k, outputs, taps(), g)
                        continue
                    there = b.and_(b.icmp_signed(">=", xr, const(0)), b.icmp_signed("<", xr, h))
                    with b.if_else(there, likely=True) as (real, padding):
                        with real:
                            add_row(u, k, outputs, taps(), g)
                        with padding:  # a row of zeros: no load, but 0 * inf is NaN as in the reference
                            add_row(u, k, outputs, [u.zero] * kw, g)
                if not grad_weight:
                    for o in range(outputs):
                        total = b.load(accs[u][o][0])
                        for r in range(1, kh):
                            total = b.fadd(total, b.load(accs[u][o][r]))
                        u.store(total, y_ptr, b.add(index, b.mul(const(o), wo)), b.mul(ho, wo), j, wo, inside)

            def add_row(u, k, outputs, vectors, g):
                """Input row ``k``'s vectors (one per kernel column) into the kernel row ``k - o * sh`` of each
                output row ``o``."""
                for o in range(outputs):
                    r = k - o * sh
                    if not 0 <= r < kh:
                        continue
                    if grad_weight:
                        for c in range(kw):
                            b.store(u.fmadd(g[o], vectors[c], b.load(sums[u][r, c])), sums[u][r, c])
                    else:
                        acc = u.zero
                        for c in range(kw):
                            acc = u.fmadd(weights[u][r, c], vectors[c], acc)
                        b.store(acc, accs[u][o][r])

            if sw == 2 and kw == 3:
                with b.if_else(b.icmp_signed("==", dw, const(1)), likely=True) as (paired, spread):
                    with paired:
                        v.each_vector(half, ho, wo, dh, rows, lambda *a: vector(*a, paired=True))
                    with spread:
                        v.each_vector(half, ho, wo, dh, rows, vector)
            else:
                v.each_vector(half, ho, wo, dh, rows, vector)
            if grad_weight:
                for r, c in taps:
                    total = None
                    for u in widths:
                        vec = b.load(sums[u][r, c])
                        for i in range(u.lanes):
                            lane = b.extract_element(vec, ir.Constant(u.i32, i))
                            total = lane if total is None else b.fadd(total, lane)
                    b.store(total, b.gep(w_ptr, [const(r * kw + c)]))
            return context.get_dummy_value()

        return sig, codegen

    return plane


def make_group_kernel(kh: int, kw: int, kb: int, vector_bytes: int, winograd: bool = False):
    """A Numba intrinsic ``k(x, xoff, cstride, cg, h, w, wts, woff, y, yoff, ystride, ho, wo, pt, pl, dh, dw, wu,
    wuoff)``: ``kb`` output planes of a stride-1 ``kh x kw`` cross-correlation over ``cg`` input planes (a group
    of a grouped layer),

    ``y[yoff + o * ystride + q * wo + i] = sum_{c, r, s} wts[woff + (o * cg + c) * kh * kw + r * kw + s]
    * x[xoff + c * cstride + xr * w + xc]``

    with ``xr`` and ``xc`` as in :func:`make_plane_kernel` (stride 1). Each input vector loaded serves the
    ``kb`` outputs (and, with dilation 1 down the rows, two output rows), its weights broadcast from memory:
    ``kb`` times the multiply-adds of the depthwise kernel per load.

    With ``winograd`` (``kh == 3``), each pair of output rows is Winograd's F(2, 3) down the rows
    (:func:`winograd_rows`): per input channel and kernel column, the four input rows' vectors ``d`` become
    ``t = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)``, each output sums ``M_i += u_i t_i`` with the transformed
    weights ``wu[wuoff + ((o * cg + c) * kw + s) * 4 + i]``, and its two rows are ``M0 + M1 + M2`` and
    ``M1 - M2 - M3``: per output, channel and kernel column, 4 multiply-adds for the pair where the direct sums
    take 6, plus 4 additions shared by the ``kb`` outputs. A pair whose outputs are not all finite is computed
    again the direct way, so inf and NaN spread exactly as in the reference (see the module doc). ``wu`` is
    ignored without ``winograd``. Each row pair asks for the lines of the input rows
    :data:`GROUP_PREFETCH_ROWS` below it.
    """
    assert not winograd or kh == 3

    @intrinsic
    def group(typingctx, x, xoff, cstride, cg, h, w, wts, woff, y, yoff, ystride, ho, wo, pt, pl, dh, dw, wu, wuoff):
        ip = types.intp
        sig = types.void(x, ip, ip, ip, ip, ip, wts, ip, y, ip, ip, ip, ip, ip, ip, ip, ip, wu, ip)

        def codegen(context, builder, signature, args):
            (x_arr, xoff, cstride, cg, h, w, w_arr, woff, y_arr, yoff, ystride, ho, wo, pt, pl, dh, dw, wu_arr,
             wuoff) = args
            dtype = signature.args[0].dtype
            v = _Vectors(context, builder, dtype, vector_bytes)
            const, b = v.const, builder
            half = _Vectors(context, builder, dtype, vector_bytes // 2, row_end=True) if vector_bytes > 32 else None
            widths = [v] if half is None else [v, half]

            x_base = b.gep(v.data(signature.args[0], x_arr), [xoff])
            y_ptr = b.gep(v.data(signature.args[8], y_arr), [yoff])
            w_ptr = b.gep(v.data(signature.args[6], w_arr), [woff])
            wu_ptr = b.gep(v.data(signature.args[17], wu_arr), [wuoff])
            taps = kh * kw
            accs = {u: [[cgutils.alloca_once_value(b, u.zero) for _ in range(2)] for _ in range(kb)] for u in widths}
            if winograd:
                sums = {u: [[cgutils.alloca_once_value(b, u.zero) for _ in range(4)] for _ in range(kb)]
                        for u in widths}

            def column_masks(u, j):
                """Per kernel column, the lanes of vector ``j`` whose input column lies in the row."""
                masks = []
                for s in range(kw):
                    cols = b.add(u.splat(b.sub(b.add(j, b.mul(const(s), dw)), pl), u.it), u.lane)
                    masks.append(b.and_(b.icmp_signed(">=", cols, u.splat(ir.Constant(u.i32, 0), u.it)),
                                        b.icmp_signed("<", cols, u.splat(w, u.it))))
                return masks

            def row_loads(u, x_ptr, q, k, j, masks):
                """Input row ``k`` (from output row ``q``'s first) at each kernel column's shift, masked: zeros
                outside the row and, for a row outside the plane, everywhere."""
                xr = b.sub(b.add(q, b.mul(const(k), dh)), pt)
                inside = b.and_(b.icmp_signed(">=", xr, const(0)), b.icmp_signed("<", xr, h))
                row = b.gep(x_ptr, [b.mul(xr, w)])
                none = ir.Constant(masks[0].type, None)
                vectors = []
                for s in range(kw):
                    ptr = b.bitcast(b.gep(row, [b.sub(b.add(j, b.mul(const(s), dw)), pl)]), u.vt.as_pointer())
                    vectors.append(b.call(u.mload, [ptr, ir.Constant(u.i32, u.align), b.select(inside, masks[s], none),
                                                    u.zero]))
                return vectors

            def store_outputs(u, q, j, values):
                """``values[o][p]`` to output ``o``'s row ``q + p`` at column ``j``."""
                index = b.add(b.mul(q, wo), j)
                for o in range(kb):
                    plane_ptr = b.gep(y_ptr, [b.mul(const(o), ystride)])
                    for p, value in enumerate(values[o]):
                        u.store(value, plane_ptr, b.add(index, b.mul(const(p), wo)), b.mul(ho, wo), j, wo)

            def direct(u, q, j, pair):
                """Output vectors ``(q, j)`` (and ``(q + 1, j)`` with ``pair``) of the ``kb`` outputs, in vectors
                of ``u``. Branch-free: every load is masked, by the columns inside the row (computed once per
                vector) and by the row being inside the plane; the lanes masked off read as zeros (0 * inf is
                NaN as in the reference)."""
                outputs = 2 if pair else 1
                for o in range(kb):
                    for p in range(outputs):
                        b.store(u.zero, accs[u][o][p])
                masks = column_masks(u, j)
                with cgutils.for_range(b, cg) as channels:
                    c = channels.index
                    x_ptr = b.gep(x_base, [b.mul(c, cstride)])
                    for k in range(kh + outputs - 1):  # input rows, from output row q's first
                        add_row(u, k, c, outputs, row_loads(u, x_ptr, q, k, j, masks))
                store_outputs(u, q, j, [[b.load(accs[u][o][p]) for p in range(outputs)] for o in range(kb)])

            def add_row(u, k, c, outputs, vectors):
                """Input row ``k`` of channel ``c`` into kernel row ``k - p`` of each output row ``p``, for each
                of the ``kb`` outputs."""
                for o in range(kb):
                    wrow = b.gep(w_ptr, [b.mul(b.add(b.mul(const(o), cg), c), const(taps))])
                    for p in range(outputs):
                        r = k - p
                        if not 0 <= r < kh:
                            continue
                        acc = b.load(accs[u][o][p])
                        for s in range(kw):
                            acc = u.fmadd(u.splat(b.load(b.gep(wrow, [const(r * kw + s)]))), vectors[s], acc)
                        b.store(acc, accs[u][o][p])

            def winograd_pair(u, q, j):
                """Output rows ``q`` and ``q + 1`` at vector ``j`` by F(2, 3) down the rows (dilation 1), stored;
                returns whether any of their lanes is inf or NaN (their sum, minus itself, is NaN then)."""
                for o in range(kb):
                    for i in range(4):
                        b.store(u.zero, sums[u][o][i])
                masks = column_masks(u, j)
                with cgutils.for_range(b, cg) as channels:
                    c = channels.index
                    x_ptr = b.gep(x_base, [b.mul(c, cstride)])
                    d = [row_loads(u, x_ptr, q, k, j, masks) for k in range(4)]
                    for k in range(2):  # the vector's lines of two rows GROUP_PREFETCH_ROWS below the pair's first
                        ahead = b.sub(b.add(q, const(GROUP_PREFETCH_ROWS + k)), pt)
                        prefetch_line(b, b.gep(x_ptr, [b.add(b.mul(ahead, w), j)]))
                    for s in range(kw):
                        t = [b.fsub(d[0][s], d[2][s]), b.fadd(d[1][s], d[2][s]), b.fsub(d[2][s], d[1][s]),
                             b.fsub(d[1][s], d[3][s])]
                        for o in range(kb):
                            urow = b.gep(wu_ptr, [b.mul(b.add(b.mul(b.add(b.mul(const(o), cg), c), const(kw)),
                                                              const(s)), const(4))])
                            for i in range(4):
                                m = u.fmadd(u.splat(b.load(b.gep(urow, [const(i)]))), t[i], b.load(sums[u][o][i]))
                                b.store(m, sums[u][o][i])
                values = []
                for o in range(kb):
                    m = [b.load(sums[u][o][i]) for i in range(4)]
                    values.append([b.fadd(b.fadd(m[0], m[1]), m[2]), b.fsub(b.fsub(m[1], m[2]), m[3])])
                total = None
                for pair in values:
                    for value in pair:
                        total = value if total is None else b.fadd(total, value)
                nan = b.fcmp_unordered("uno", b.fsub(total, total), u.zero)
                bad = b.icmp_unsigned("!=", b.bitcast(nan, ir.IntType(u.lanes)), ir.Constant(ir.IntType(u.lanes), 0))
                store_outputs(u, q, j, values)
                return bad

            def vector(u, q, j, rows):
                pair = rows == 2
                if winograd and pair:
                    with b.if_then(winograd_pair(u, q, j), likely=False):  # inf or NaN: the exact sums
                        direct(u, q, j, pair)
                else:
                    direct(u, q, j, pair)

            v.each_vector(half, ho, wo, dh, 2, vector)
            return context.get_dummy_value()

        return sig, codegen

    return group


@njit(cache=True, nogil=True)
def _winograd_rows(w, out):  # pragma: no cover - compiled
    """:func:`winograd_rows` into ``out (K, C_g, kw, 4)``, each entry computed in float64 as
    ``((g0 + g2) +- g1) * 0.5``, without fast-math flags (the tests check it against NumPy's array passes bit for
    bit)."""
    k, c_g, _, kw = w.shape
    for o in range(k):
        for c in range(c_g):
            for s in range(kw):
                g0, g1, g2 = np.float64(w[o, c, 0, s]), np.float64(w[o, c, 1, s]), np.float64(w[o, c, 2, s])
                outer = g0 + g2
                out[o, c, s, 0] = g0
                out[o, c, s, 1] = (outer + g1) * 0.5
                out[o, c, s, 2] = (outer - g1) * 0.5
                out[o, c, s, 3] = g2


def winograd_rows(w: np.ndarray) -> np.ndarray:
    """``w (K, C_g, 3, kw)`` to ``(K, C_g, kw, 4)``: per kernel column, its three taps down the rows times
    F(2, 3)'s ``G``, ``(g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2)`` (computed in float64; inf - inf from
    infinite taps is NaN, whose row pairs the kernel computes again by the direct sums). Compiled: ResNeXt's
    128 x 4 x 3 x 3 weights in 3.5 us where NumPy's array passes took 23-25, on every forward and input gradient
    of the layer (one-off script)."""
    out = np.empty((w.shape[0], w.shape[1], w.shape[3], 4), dtype=w.dtype)
    _winograd_rows(np.ascontiguousarray(w), out)
    return out


def make_grad_input2_kernel(kh: int, kw: int, vector_bytes: int):
    """A Numba intrinsic ``k(gy, gyoff, ho, wo, wts, woff, gx, gxoff, h, w, pt, pl, dh, dw)``: one plane's input
    gradient of :func:`make_plane_kernel`'s stride-2 forward (``y`` of ``ho x wo`` from ``x`` of ``h x w``),

    ``gx[gxoff + p * w + col] = sum_{r, c} wts[woff + r * kw + c] * gy[gyoff + q * wo + i]``

    over the taps with ``p = 2 q + r * dh - pt`` and ``col = 2 i + c * dw - pl``; positions that no tap
    reaches get zero. Gathered, not scattered: row ``p`` takes the kernel rows ``r`` with ``p + pt - r * dh``
    even, and a vector of ``lanes`` columns ``2 m + e`` of one parity ``e`` takes the kernel columns ``c``
    with ``e + pl - c * dw`` even, from the contiguous run ``gy[q, m + (e + pl - c * dw) / 2]``; the even and
    odd columns' vectors are then interleaved into two vectors of ``gx``. A vector pair whose loads and
    stores all lie in their rows tests none of them; with odd dilations a row whose taps all exist runs with
    its taps fixed by its parities (see BENCHMARKS.md, "The round at 6afcbc2, 2f63ffd and 9292dbf").
    """

    @intrinsic
    def plane(typingctx, gy, gyoff, ho, wo, wts, woff, gx, gxoff, h, w, pt, pl, dh, dw):
        ip = types.intp
        sig = types.void(gy, ip, ip, ip, wts, ip, gx, ip, ip, ip, ip, ip, ip, ip)

        def codegen(context, builder, signature, args):
            gy_arr, gyoff, ho, wo, w_arr, woff, gx_arr, gxoff, h, w, pt, pl, dh, dw = args
            v = _Vectors(context, builder, signature.args[0].dtype, vector_bytes)
            lanes, const, b = v.lanes, v.const, builder
            half = lanes // 2
            low = ir.Constant(ir.VectorType(v.i32, lanes), [i // 2 + (i % 2) * lanes for i in range(lanes)])
            high = ir.Constant(ir.VectorType(v.i32, lanes), [half + i // 2 + (i % 2) * lanes for i in range(lanes)])

            def even(value):
                return b.icmp_signed("==", b.and_(value, const(1)), const(0))

            gy_ptr = b.gep(v.data(signature.args[0], gy_arr), [gyoff])
            gx_ptr = b.gep(v.data(signature.args[6], gx_arr), [gxoff])
            w_ptr = b.gep(v.data(signature.args[4], w_arr), [woff])
            weights = {(r, c): v.splat(b.load(b.gep(w_ptr, [const(r * kw + c)]))) for r in range(kh) for c in range(kw)}
            accs = [cgutils.alloca_once_value(b, v.zero) for _ in range(2)]
            pairs = b.ashr(b.add(w, const(1)), const(1))  # column pairs (2 m, 2 m + 1) per row
            # the columns of gy that a vector pair m reads lie in [m + first, m + last + lanes)
            first = b.ashr(b.sub(pl, b.mul(const(kw - 1), dw)), const(1))
            last = b.ashr(b.add(pl, const(1)), const(1))

            def pair(p, m, inside, taps=None):
                """Input columns ``2 m ..`` of row ``p``; with ``inside``, every load and store lies in its row.
                With ``taps`` (the kernel rows, and the kernel columns of either parity of the input's columns),
                the caller knows which taps reach the pair and that their rows exist: no test of either."""
                for acc in accs:
                    b.store(v.zero, acc)

                def add_tap(r, e, c, row):
                    col = b.add(m, b.ashr(b.sub(b.add(const(e), pl), b.mul(const(c), dw)), const(1)))
                    got = v.load(b.gep(row, [col]), col, lanes, wo, inside=inside)[0]
                    b.store(v.fmadd(weights[r, c], got, b.load(accs[e])), accs[e])

                for r in range(kh):
                    t = b.sub(b.add(p, pt), b.mul(const(r), dh))
                    row = b.gep(gy_ptr, [b.mul(b.ashr(t, const(1)), wo)])
                    if taps is not None:
                        if r in taps[0]:
                            for e in range(2):
                                for c in taps[1][e]:
                                    add_tap(r, e, c, row)
                        continue
                    reached = b.and_(b.and_(even(t), b.icmp_signed(">=", t, const(0))),
                                     b.icmp_signed("<", b.ashr(t, const(1)), ho))
                    with b.if_then(reached):
                        for e in range(2):
                            for c in range(kw):
                                with b.if_then(even(b.sub(b.add(const(e), pl), b.mul(const(c), dw)))):
                                    add_tap(r, e, c, row)
                evens, odds = b.load(accs[0]), b.load(accs[1])
                col = b.mul(m, const(2))
                index = b.add(b.mul(p, w), col)
                size = b.mul(h, w)
                v.store(b.shuffle_vector(evens, odds, low), gx_ptr, index, size, col, w, inside)
                col = b.add(col, const(lanes))
                if inside:
                    v.store(b.shuffle_vector(evens, odds, high), gx_ptr, b.add(index, const(lanes)), size, col, w, True)
                    return
                with b.if_then(b.icmp_signed("<", col, w)):
                    v.store(b.shuffle_vector(evens, odds, high), gx_ptr, b.add(index, const(lanes)), size, col, w)

            def row_of_pairs(p, taps=None):
                with cgutils.for_range_slice(b, const(0), pairs, const(lanes), inc=True) as (m, _):
                    inside = b.and_(b.and_(b.icmp_signed(">=", b.add(m, first), const(0)),
                                           b.icmp_signed("<=", b.add(b.add(m, last), const(lanes)), wo)),
                                    b.icmp_signed("<=", b.add(b.mul(m, const(2)), const(2 * lanes)), w))
                    with b.if_else(inside, likely=True) as (plain, edge):
                        with plain:
                            pair(p, m, True, taps)
                        with edge:
                            pair(p, m, False)

            # With odd dilations, the taps that reach row p are the kernel rows of the parity of p + pt, and
            # those that reach an input column of parity e the kernel columns of the parity of e + pl: where
            # all those rows exist, the row runs on code with its taps fixed (one of four: the parities of
            # p + pt and pl), with no test of a tap's parity or row.
            odd = b.and_(b.and_(dh, dw), const(1))
            columns = {(lp, e): [c for c in range(kw) if (c - lp - e) % 2 == 0] for lp in range(2) for e in range(2)}
            with cgutils.for_range(b, h) as rows:
                p = rows.index
                top = b.add(p, pt)
                fixed = b.and_(b.icmp_signed("!=", odd, const(0)),
                               b.and_(b.icmp_signed(">=", b.sub(top, b.mul(const(kh - 1), dh)), const(0)),
                                      b.icmp_signed("<", b.ashr(top, const(1)), ho)))
                with b.if_else(fixed, likely=True) as (known, tested):
                    with known:
                        for tp in range(2):  # the parity of p + pt
                            for lp in range(2):  # the parity of pl
                                here = b.and_(b.icmp_signed("==", b.and_(top, const(1)), const(tp)),
                                              b.icmp_signed("==", b.and_(pl, const(1)), const(lp)))
                                with b.if_then(here):
                                    row_of_pairs(p, ([r for r in range(kh) if (r - tp) % 2 == 0],
                                                     [columns[lp, e] for e in range(2)]))
                    with tested:
                        row_of_pairs(p)
            return context.get_dummy_value()

        return sig, codegen

    return plane


_forward1 = make_plane_kernel(KH, KW, 1, 1, VECTOR_BYTES)
_forward2 = make_plane_kernel(KH, KW, 2, 2, VECTOR_BYTES)
_grad_weight1 = make_plane_kernel(KH, KW, 1, 1, VECTOR_BYTES, grad_weight=True)
_grad_weight2 = make_plane_kernel(KH, KW, 2, 2, VECTOR_BYTES, grad_weight=True)
_grad_input2 = make_grad_input2_kernel(KH, KW, VECTOR_BYTES)
GROUP_OUTPUTS = 4  # outputs per pass of the grouped kernel (each input vector loaded serves them all)
_group_block = make_group_kernel(KH, KW, GROUP_OUTPUTS, VECTOR_BYTES, winograd=True)
_group_one = make_group_kernel(KH, KW, 1, VECTOR_BYTES, winograd=True)


def _forward(x, w, groups, stride, h, wd, ho, wo, pt, pl, dh, dw, out):  # pragma: no cover - compiled
    """``out (n, K, ho * wo)`` from ``x (n, C, h * wd)`` and ``w (K, 9)``: output channel ``k`` of group
    ``g = k // (K / groups)`` from input channel ``g`` (one input channel per group). One job per plane."""
    n, k_total = out.shape[:2]
    k_g = k_total // groups
    for job in prange(n * k_total):
        b = job // k_total
        k = job % k_total
        if stride == 1:
            _forward1(x[b, k // k_g], 0, h, wd, w[k], 0, out[b, k], 0, ho, wo, pt, pl, dh, dw)
        else:
            _forward2(x[b, k // k_g], 0, h, wd, w[k], 0, out[b, k], 0, ho, wo, pt, pl, dh, dw)


def _grad_weight(x, gy, groups, stride, h, wd, ho, wo, pt, pl, dh, dw, parts):  # pragma: no cover - compiled
    """``parts (n, K, 9)``: each image's share of the weight gradient of :func:`_forward`. One job per plane."""
    n, k_total = parts.shape[:2]
    k_g = k_total // groups
    for job in prange(n * k_total):
        b = job // k_total
        k = job % k_total
        if stride == 1:
            _grad_weight1(x[b, k // k_g], 0, h, wd, parts[b, k], 0, gy[b, k], 0, ho, wo, pt, pl, dh, dw)
        else:
            _grad_weight2(x[b, k // k_g], 0, h, wd, parts[b, k], 0, gy[b, k], 0, ho, wo, pt, pl, dh, dw)


def _grad_input(gy, w, h, wd, ho, wo, pt, pl, dh, dw, out):  # pragma: no cover - compiled
    """``out (n, C, h * wd)``: the input gradient of the stride-2 :func:`_forward` of a depthwise layer without
    a channel multiplier (``K = C = groups``) from ``gy (n, C, ho * wo)``. One job per plane."""
    n, c = out.shape[:2]
    for job in prange(n * c):
        b = job // c
        ch = job % c
        _grad_input2(gy[b, ch], 0, ho, wo, w[ch], 0, out[b, ch], 0, h, wd, pt, pl, dh, dw)


def _forward_grouped(x, w, wu, groups, h, wd, ho, wo, pt, pl, dh, dw, out):  # pragma: no cover - compiled
    """``out (n, K, ho * wo)`` from ``x (n, C, h * wd)`` and ``w (K, C_g * 9)``, stride 1, with ``C_g`` input
    channels per group. One job per (image, group, block of GROUP_OUTPUTS outputs)."""
    n, k_total = out.shape[:2]
    c_g = x.shape[1] // groups
    k_g = k_total // groups
    blocks = -(-k_g // GROUP_OUTPUTS)
    size = h * wd
    for job in prange(n * groups * blocks):
        b = job // (groups * blocks)
        g = (job // blocks) % groups
        k0 = g * k_g + (job % blocks) * GROUP_OUTPUTS
        k1 = min(k0 + GROUP_OUTPUTS, (g + 1) * k_g)
        xb = x[b].ravel()
        wf = w.ravel()
        wuf = wu.ravel()
        yb = out[b].ravel()
        if k1 - k0 == GROUP_OUTPUTS:
            _group_block(xb, g * c_g * size, size, c_g, h, wd, wf, k0 * c_g * 9, yb, k0 * ho * wo, ho * wo, ho, wo,
                         pt, pl, dh, dw, wuf, k0 * c_g * KW * 4)
        else:
            for k in range(k0, k1):
                _group_one(xb, g * c_g * size, size, c_g, h, wd, wf, k * c_g * 9, yb, k * ho * wo, ho * wo, ho, wo,
                           pt, pl, dh, dw, wuf, k * c_g * KW * 4)


_FORWARD = (_compile(_forward, False), _compile(_forward, True))
_FORWARD_GROUPED = (_compile(_forward_grouped, False), _compile(_forward_grouped, True))
_GRAD_INPUT = (_compile(_grad_input, False), _compile(_grad_input, True))
_GRAD_WEIGHT = (_compile(_grad_weight, False), _compile(_grad_weight, True))


def applies(c_g: int, plan) -> bool:
    """Whether this module computes the layer's forward and weight gradient: 2-D, one input channel per group,
    a 3 x 3 kernel, strides of 1 or 2 alike on both axes (any dilation, any zero padding)."""
    return (c_g == 1 and plan.kernel == (KH, KW) and len(plan.out) == 2 and plan.stride[0] == plan.stride[1]
            and plan.stride[0] in (1, 2))


def applies_grouped(c_g: int, plan) -> bool:
    """Whether :func:`forward` computes this grouped forward: 2-D, 3 x 3, stride 1 (any dilation and padding),
    any number of input channels per group."""
    return plan.kernel == (KH, KW) and len(plan.out) == 2 and plan.unit_stride


def _geometry(x_shape, plan, pads):
    n, c, h, wd = x_shape
    ho, wo = plan.out
    (pt, _), (pl, _) = pads
    return plan.stride[0], h, wd, ho, wo, pt, pl, *plan.dilation


def forward(x: np.ndarray, w: np.ndarray, groups: int, plan, pads, y: np.ndarray, parallel: bool) -> np.ndarray:
    """``y (n, K, ho, wo)``: the forward of :func:`applies` (depthwise) or :func:`applies_grouped`, written in
    place."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    planes = np.ascontiguousarray(x).reshape(n, c, h * wd)
    out = y.reshape(n, k, math.prod(plan.out))
    if c != groups:  # several input channels per group: the grouped kernel
        _FORWARD_GROUPED[int(parallel)](planes, np.ascontiguousarray(w).reshape(k, (c // groups) * KH * KW),
                                        winograd_rows(w).reshape(k, (c // groups) * KW * 4), groups,
                                        *_geometry(x.shape, plan, pads)[1:], out)
        return y
    _FORWARD[int(parallel)](planes, np.ascontiguousarray(w).reshape(k, KH * KW), groups,
                            *_geometry(x.shape, plan, pads), out)
    return y


def grad_weight(gy: np.ndarray, x: np.ndarray, groups: int, plan, pads, parallel: bool) -> np.ndarray:
    """``(K, 1, 3, 3)``: the weight gradient of :func:`forward`, summed over the batch (each image's share
    computed apart, then added)."""
    n, c, h, wd = x.shape
    k = gy.shape[1]
    parts = np.empty((n, k, KH * KW), dtype=x.dtype)
    _GRAD_WEIGHT[int(parallel)](np.ascontiguousarray(x).reshape(n, c, h * wd),
                                np.ascontiguousarray(gy).reshape(n, k, math.prod(plan.out)), groups,
                                *_geometry(x.shape, plan, pads), parts)
    return parts.sum(axis=0).reshape(k, 1, KH, KW)


def grad_input(gy: np.ndarray, w: np.ndarray, plan, pads, in_shape, parallel: bool) -> np.ndarray:
    """``(n, C, h, w)``: the input gradient of a stride-2 layer of :func:`applies` with one output channel per
    group. The weights must be finite: the gradient's vectors are zero past its rows' ends, and ``0 * inf``
    would be NaN where the reference has no term."""
    n, c, h, wd = in_shape
    gx = np.empty(in_shape, dtype=gy.dtype)
    _stride, _, _, ho, wo, pt, pl, dh, dw = _geometry(in_shape, plan, pads)
    _GRAD_INPUT[int(parallel)](np.ascontiguousarray(gy).reshape(n, c, ho * wo),
                               np.ascontiguousarray(w).reshape(c, KH * KW), h, wd, ho, wo, pt, pl, dh, dw,
                               gx.reshape(n, c, h * wd))
    return gx
