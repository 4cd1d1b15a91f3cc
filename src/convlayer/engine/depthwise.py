"""Depthwise 3x3 convolution, stride 1 or 2, in one pass over each plane: no padded copy, no patch matrix.

The direct kernels of :mod:`.direct` first copy each plane into a padded,
phase-split buffer, then sum the taps row by row, each output row a
Numba loop of its own; on MobileNet's 56 x 56 planes the loops' set-up
(nine slices, their overlap checks) cost more than their 3-4 vectors of
arithmetic. Here one compiled kernel per plane (:func:`make_plane_kernel`,
LLVM IR with explicit vector types, like :mod:`.implicit`'s tiles) reads
the unpadded input where it lies:

* output row ``q``, columns ``j .. j + lanes - 1``: for each kernel row
  ``r`` whose input row exists, three vector loads at the column shifts
  ``c * dw - pl`` (with stride 2, the even lanes of two loads each), each
  multiplied by its broadcast weight; one accumulator per kernel row
  (three short chains instead of one of nine);
* where a load would cross the row's ends (the first and last vectors of
  a row: the zero padding), a masked load reads only the lanes inside
  the row and zeros the others;
* the forward stores whole vectors, the lanes past a row's end landing on
  the next row's first outputs, which are written after them; only the
  plane's last vector is stored under a mask;
* the weight gradient keeps nine vector sums over the plane, each the
  output gradient's vector times the tap's input vector, and adds their
  lanes at the end: one image's share per job, summed over the batch
  after.

Every output is the sum of the nine products with the input where it
exists, so inf and NaN spread exactly as in the reference; only the order
of the additions differs from the other strategies.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .direct import _compile
from .implicit import VECTOR_BYTES

KH = KW = 3


def make_plane_kernel(kh: int, kw: int, sh: int, sw: int, vector_bytes: int, grad_weight: bool = False):
    """A Numba intrinsic ``k(x, xoff, h, w, wts, woff, y, yoff, ho, wo, pt, pl, dh, dw)`` over one plane.

    The plane's ``kh x kw`` cross-correlation with strides ``sh, sw`` (1 or 2), zero-padded by ``pt`` rows
    and ``pl`` columns before it, sums ``wts[woff + r * kw + c] * x[xoff + xr * w + xc]`` into output
    ``(q, i)``, ``q < ho``, ``i < wo``, over the taps with ``xr = q * sh + r * dh - pt`` in ``[0, h)`` and
    ``xc = i * sw + c * dw - pl`` in ``[0, w)``. The forward writes ``y[yoff + q * wo + i]``; with
    ``grad_weight``, ``y`` holds the output's gradient and the kernel writes the plane's share of the weight
    gradient, ``wts[woff + r * kw + c] = sum_{q, i} y[yoff + q * wo + i] * x[...]``.

    Output columns are taken ``lanes`` at a time; with stride 2 the input columns of a vector are the even
    lanes of two vector loads. ``x``, ``wts`` and ``y`` are 1-D arrays of one float dtype; nothing is
    bounds-checked, and nothing outside the planes is read or written.
    """
    assert sh in (1, 2) and sw in (1, 2)

    @intrinsic
    def plane(typingctx, x, xoff, h, w, wts, woff, y, yoff, ho, wo, pt, pl, dh, dw):
        ip = types.intp
        sig = types.void(x, ip, ip, ip, wts, ip, y, ip, ip, ip, ip, ip, ip, ip)

        def codegen(context, builder, signature, args):
            x_arr, xoff, h, w, w_arr, woff, y_arr, yoff, ho, wo, pt, pl, dh, dw = args
            dtype = signature.args[0].dtype
            fty = context.get_value_type(dtype)
            lanes = vector_bytes // (4 if dtype == types.float32 else 8)
            vt = ir.VectorType(fty, lanes)
            i64, i32, i1 = ir.IntType(64), ir.IntType(32), ir.IntType(1)
            mt = ir.VectorType(i1, lanes)
            it = ir.VectorType(i32, lanes)  # lane positions within a row (a row is far shorter than 2**31)
            align = 4 if dtype == types.float32 else 8
            suffix = f"v{lanes}{'f32' if dtype == types.float32 else 'f64'}"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), f"llvm.fma.{suffix}")
            mload = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt.as_pointer(), i32, mt, vt]), f"llvm.masked.load.{suffix}.p0")
            mstore = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, mt]),
                f"llvm.masked.store.{suffix}.p0")

            def data(k, value):
                return context.make_array(signature.args[k])(context, builder, value).data

            def const(v):
                return ir.Constant(i64, v)

            def splat(value, ty):
                undef = ir.Constant(ty, ir.Undefined)
                zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
                return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(i32, 0)), undef, zeros)

            zero = ir.Constant(vt, None)
            lane = ir.Constant(it, list(range(lanes)))
            splat_w = splat(builder.trunc(w, i32), it)
            splat_wo = splat(builder.trunc(wo, i32), it)
            splat_zero = ir.Constant(it, [0] * lanes)

            def load(ptr, col, count, used=None):
                """``count`` elements from ``ptr`` (column ``col`` of its row): whole where they lie in the
                row, else masked, zeros for the columns outside it (the padding). With ``used``, only the
                first ``used`` elements are read (the others are zeros): where the output gradient's vector
                has zeros past the row's end, the input must have zeros there too (``0 * inf`` is NaN)."""
                whole = builder.and_(builder.icmp_signed(">=", col, const(0)),
                                     builder.icmp_signed("<=", builder.add(col, const(count)), w))
                if used is not None:
                    whole = builder.and_(whole, builder.icmp_signed(">=", used, const(count)))
                vectors = []
                with builder.if_else(whole, likely=True) as (plain, edge):
                    with plain:
                        got = [builder.load(builder.bitcast(builder.gep(ptr, [const(lanes * v)]), vt.as_pointer()),
                                            align=align) for v in range(count // lanes)]
                        bb_plain = builder.block
                    with edge:
                        cols = builder.add(splat(builder.trunc(col, i32), it), lane)
                        masked = []
                        for v in range(count // lanes):
                            at = builder.add(cols, splat(ir.Constant(i32, lanes * v), it)) if v else cols
                            mask = builder.and_(builder.icmp_signed(">=", at, splat_zero),
                                                builder.icmp_signed("<", at, splat_w))
                            if used is not None:
                                first = builder.add(lane, splat(ir.Constant(i32, lanes * v), it)) if v else lane
                                mask = builder.and_(mask, builder.icmp_signed("<", first, splat(used32, it)))
                            p = builder.bitcast(builder.gep(ptr, [const(lanes * v)]), vt.as_pointer())
                            masked.append(builder.call(mload, [p, ir.Constant(i32, align), mask, zero]))
                        bb_edge = builder.block
                for a, b in zip(got, masked):
                    phi = builder.phi(vt)
                    phi.add_incoming(a, bb_plain)
                    phi.add_incoming(b, bb_edge)
                    vectors.append(phi)
                if sw == 1:
                    return vectors[0]
                evens = ir.Constant(ir.VectorType(i32, lanes), list(range(0, 2 * lanes, 2)))
                return builder.shuffle_vector(vectors[0], vectors[1], evens)  # columns col, col + 2, ...

            def sum_rows():
                total = builder.load(accs[0])
                for r in range(1, kh):
                    total = builder.fadd(total, builder.load(accs[r]))
                return total

            def store(total, out, q, j):
                """A whole vector where it fits in the plane: lanes past the row's end land on the next row's
                first outputs, which are written after it (Zen 4's masked stores are slow); the plane's last
                outputs under a mask."""
                room = builder.icmp_signed("<=", builder.add(builder.add(builder.mul(q, wo), j), const(lanes)),
                                           builder.mul(ho, wo))
                with builder.if_else(room, likely=True) as (plain, edge):
                    with plain:
                        builder.store(total, out, align=align)
                    with edge:
                        outputs = builder.add(splat(builder.trunc(j, i32), it), lane)
                        mask = builder.icmp_signed("<", outputs, splat_wo)
                        builder.call(mstore, [total, out, ir.Constant(i32, align), mask])

            x_ptr = builder.gep(data(0, x_arr), [xoff])
            y_ptr = builder.gep(data(6, y_arr), [yoff])
            w_ptr = builder.gep(data(4, w_arr), [woff])
            taps = [(r, c) for r in range(kh) for c in range(kw)]
            if grad_weight:
                sums = {t: cgutils.alloca_once_value(builder, zero) for t in taps}
            else:
                weights = {(r, c): splat(builder.load(builder.gep(w_ptr, [const(r * kw + c)])), vt) for r, c in taps}
                accs = [cgutils.alloca_once_value(builder, zero) for _ in range(kh)]
            with cgutils.for_range(builder, ho) as rows:
                q = rows.index
                with cgutils.for_range_slice(builder, const(0), wo, const(lanes), inc=True) as (j, _):
                    out = builder.bitcast(builder.gep(y_ptr, [builder.add(builder.mul(q, wo), j)]), vt.as_pointer())
                    if grad_weight:  # the gradient's vector, zeros past the row's end
                        full = builder.icmp_signed("<=", builder.add(j, const(lanes)), wo)
                        with builder.if_else(full, likely=True) as (plain, edge):
                            with plain:
                                g_plain = builder.load(out, align=align)
                                bb_plain = builder.block
                            with edge:
                                mask = builder.icmp_signed("<", builder.add(splat(builder.trunc(j, i32), it), lane),
                                                           splat_wo)
                                g_edge = builder.call(mload, [out, ir.Constant(i32, align), mask, zero])
                                bb_edge = builder.block
                        g = builder.phi(vt)
                        g.add_incoming(g_plain, bb_plain)
                        g.add_incoming(g_edge, bb_edge)
                    if grad_weight:  # input elements each vector multiplies with the gradient's real lanes
                        used = builder.mul(builder.sub(wo, j), const(sw))
                        used32 = builder.trunc(builder.select(builder.icmp_signed("<", used, const(sw * lanes)), used,
                                                              const(sw * lanes)), i32)
                    else:
                        used = None
                    for r in range(kh):
                        if not grad_weight:
                            builder.store(zero, accs[r])
                        xr = builder.sub(builder.add(builder.mul(q, const(sh)), builder.mul(const(r), dh)), pt)
                        inside = builder.and_(builder.icmp_signed(">=", xr, const(0)), builder.icmp_signed("<", xr, h))
                        with builder.if_then(inside, likely=True):
                            row = builder.gep(x_ptr, [builder.mul(xr, w)])
                            acc = None if grad_weight else zero
                            for c in range(kw):
                                col = builder.sub(builder.add(builder.mul(j, const(sw)), builder.mul(const(c), dw)), pl)
                                v = load(builder.gep(row, [col]), col, sw * lanes, used)
                                if grad_weight:
                                    builder.store(builder.call(fma, [g, v, builder.load(sums[r, c])]), sums[r, c])
                                else:
                                    acc = builder.call(fma, [weights[r, c], v, acc])
                            if not grad_weight:
                                builder.store(acc, accs[r])
                    if not grad_weight:
                        store(builder.load(accs[0]) if kh == 1 else sum_rows(), out, q, j)
            if grad_weight:
                for r, c in taps:
                    vec = builder.load(sums[r, c])
                    total = builder.extract_element(vec, ir.Constant(i32, 0))
                    for i in range(1, lanes):
                        total = builder.fadd(total, builder.extract_element(vec, ir.Constant(i32, i)))
                    builder.store(total, builder.gep(w_ptr, [const(r * kw + c)]))
            return context.get_dummy_value()

        return sig, codegen

    return plane


_forward1 = make_plane_kernel(KH, KW, 1, 1, VECTOR_BYTES)
_forward2 = make_plane_kernel(KH, KW, 2, 2, VECTOR_BYTES)
_grad_weight1 = make_plane_kernel(KH, KW, 1, 1, VECTOR_BYTES, grad_weight=True)
_grad_weight2 = make_plane_kernel(KH, KW, 2, 2, VECTOR_BYTES, grad_weight=True)


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


_FORWARD = (_compile(_forward, False), _compile(_forward, True))
_GRAD_WEIGHT = (_compile(_grad_weight, False), _compile(_grad_weight, True))


def applies(c_g: int, plan) -> bool:
    """Whether this module computes the layer's forward and weight gradient: 2-D, one input channel per group,
    a 3 x 3 kernel, strides of 1 or 2 alike on both axes (any dilation, any zero padding)."""
    return (c_g == 1 and plan.kernel == (KH, KW) and len(plan.out) == 2 and plan.stride[0] == plan.stride[1]
            and plan.stride[0] in (1, 2))


def _geometry(x_shape, plan, pads):
    n, c, h, wd = x_shape
    ho, wo = plan.out
    (pt, _), (pl, _) = pads
    return plan.stride[0], h, wd, ho, wo, pt, pl, *plan.dilation


def forward(x: np.ndarray, w: np.ndarray, groups: int, plan, pads, y: np.ndarray, parallel: bool) -> np.ndarray:
    """``y (n, K, ho, wo)``: the depthwise forward of :func:`applies`, written in place."""
    n, c = x.shape[:2]
    k = w.shape[0]
    _FORWARD[int(parallel)](np.ascontiguousarray(x).reshape(n, c, -1), np.ascontiguousarray(w).reshape(k, KH * KW),
                            groups, *_geometry(x.shape, plan, pads), y.reshape(n, k, -1))
    return y


def grad_weight(gy: np.ndarray, x: np.ndarray, groups: int, plan, pads, parallel: bool) -> np.ndarray:
    """``(K, 1, 3, 3)``: the weight gradient of :func:`forward`, summed over the batch (each image's share
    computed apart, then added)."""
    n, c = x.shape[:2]
    k = gy.shape[1]
    parts = np.empty((n, k, KH * KW), dtype=x.dtype)
    _GRAD_WEIGHT[int(parallel)](np.ascontiguousarray(x).reshape(n, c, -1), np.ascontiguousarray(gy).reshape(n, k, -1),
                                groups, *_geometry(x.shape, plan, pads), parts)
    return parts.sum(axis=0).reshape(k, 1, KH, KW)
