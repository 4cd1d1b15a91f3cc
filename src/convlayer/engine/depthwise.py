"""Depthwise 3x3 convolution, stride 1, in one pass over each plane: no padded copy, no patch matrix.

The direct kernels of :mod:`.direct` first copy each plane into a padded,
phase-split buffer, then sum the taps row by row, each output row a
Numba loop of its own; on MobileNet's 56 x 56 planes the loops' set-up
(nine slices, their overlap checks) cost more than their 3-4 vectors of
arithmetic. Here one compiled kernel per plane (:func:`make_plane_kernel`,
LLVM IR with explicit vector types, like :mod:`.implicit`'s tiles) reads
the unpadded input where it lies:

* output row ``q``, columns ``j .. j + lanes - 1``: for each kernel row
  ``r`` whose input row ``q + r * dh - pt`` exists, three vector loads at
  the column shifts ``c * dw - pl``, each multiplied by its broadcast
  weight and summed; one accumulator per kernel row (three short chains
  instead of one of nine);
* where a shifted load would cross the row's ends (the first and last
  vectors of a row: the zero padding), a masked load reads only the
  lanes inside the row and zeros the others; the last vector of a row is
  stored under a mask of the outputs that exist.

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


def make_plane_kernel(kh: int, kw: int, vector_bytes: int):
    """A Numba intrinsic ``k(x, xoff, h, w, wts, woff, y, yoff, ho, wo, pt, pl, dh, dw)``.

    ``y[yoff + q * wo + i] = sum_{r, c} wts[woff + r * kw + c] * x[xoff + xr * w + xc]`` over the taps with
    ``xr = q + r * dh - pt`` in ``[0, h)`` and ``xc = i + c * dw - pl`` in ``[0, w)``, for ``q < ho`` and
    ``i < wo``: one output plane of a ``kh x kw`` stride-1 cross-correlation of the ``h x w`` input plane,
    zero-padded by ``pt`` rows and ``pl`` columns before it. ``x``, ``wts`` and ``y`` are 1-D arrays of one
    float dtype; nothing is bounds-checked, and nothing outside the planes is read or written.
    """

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

            x_ptr = builder.gep(data(0, x_arr), [xoff])
            y_ptr = builder.gep(data(6, y_arr), [yoff])
            w_ptr = builder.gep(data(4, w_arr), [woff])
            weights = [[splat(builder.load(builder.gep(w_ptr, [const(r * kw + c)])), vt) for c in range(kw)]
                       for r in range(kh)]
            zero = ir.Constant(vt, None)
            lane = ir.Constant(it, list(range(lanes)))
            splat_w = splat(builder.trunc(w, i32), it)
            splat_wo = splat(builder.trunc(wo, i32), it)
            splat_zero = ir.Constant(it, [0] * lanes)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(kh)]
            with cgutils.for_range(builder, ho) as rows:
                q = rows.index
                with cgutils.for_range_slice(builder, const(0), wo, const(lanes), inc=True) as (j, _):
                    for r in range(kh):
                        builder.store(zero, accs[r])
                        xr = builder.sub(builder.add(q, builder.mul(const(r), dh)), pt)
                        inside = builder.and_(builder.icmp_signed(">=", xr, const(0)), builder.icmp_signed("<", xr, h))
                        with builder.if_then(inside, likely=True):
                            row = builder.gep(x_ptr, [builder.mul(xr, w)])
                            acc = zero
                            for c in range(kw):
                                col = builder.sub(builder.add(j, builder.mul(const(c), dw)), pl)
                                ptr = builder.bitcast(builder.gep(row, [col]), vt.as_pointer())
                                whole = builder.and_(builder.icmp_signed(">=", col, const(0)),
                                                     builder.icmp_signed("<=", builder.add(col, const(lanes)), w))
                                with builder.if_else(whole, likely=True) as (plain, edge):
                                    with plain:
                                        v_plain = builder.load(ptr, align=align)
                                        bb_plain = builder.block
                                    with edge:  # only the lanes inside the row; zeros for the padding
                                        cols = builder.add(splat(builder.trunc(col, i32), it), lane)
                                        mask = builder.and_(builder.icmp_signed(">=", cols, splat_zero),
                                                            builder.icmp_signed("<", cols, splat_w))
                                        v_edge = builder.call(mload, [ptr, ir.Constant(i32, align), mask, zero])
                                        bb_edge = builder.block
                                v = builder.phi(vt)
                                v.add_incoming(v_plain, bb_plain)
                                v.add_incoming(v_edge, bb_edge)
                                acc = builder.call(fma, [weights[r][c], v, acc])
                            builder.store(acc, accs[r])
                    total = builder.load(accs[0])
                    for r in range(1, kh):
                        total = builder.fadd(total, builder.load(accs[r]))
                    out = builder.bitcast(builder.gep(y_ptr, [builder.add(builder.mul(q, wo), j)]), vt.as_pointer())
                    # a whole vector where it fits in the plane: lanes past the row's end land on the next
                    # row's first outputs, which are written after it (Zen 4's masked stores are slow)
                    room = builder.icmp_signed("<=", builder.add(builder.add(builder.mul(q, wo), j), const(lanes)),
                                               builder.mul(ho, wo))
                    with builder.if_else(room, likely=True) as (plain, edge):
                        with plain:
                            builder.store(total, out, align=align)
                        with edge:  # the row's last outputs
                            outputs = builder.add(splat(builder.trunc(j, i32), it), lane)
                            mask = builder.icmp_signed("<", outputs, splat_wo)
                            builder.call(mstore, [total, out, ir.Constant(i32, align), mask])
            return context.get_dummy_value()

        return sig, codegen

    return plane


_plane = make_plane_kernel(KH, KW, VECTOR_BYTES)


def _forward(x, w, groups, h, wd, ho, wo, pt, pl, dh, dw, out):  # pragma: no cover - compiled
    """``out (n, K, ho * wo)`` from ``x (n, C, h * wd)`` and ``w (K, 9)``: output channel ``k`` of group
    ``g = k // (K / groups)`` from input channel ``g`` (one input channel per group). One job per plane."""
    n, k_total = out.shape[:2]
    k_g = k_total // groups
    for job in prange(n * k_total):
        b = job // k_total
        k = job % k_total
        _plane(x[b, k // k_g], 0, h, wd, w[k], 0, out[b, k], 0, ho, wo, pt, pl, dh, dw)


_FORWARD = (_compile(_forward, False), _compile(_forward, True))


def applies(c_g: int, plan) -> bool:
    """Whether :func:`forward` computes this forward: 2-D, one input channel per group, a 3 x 3 kernel, stride 1
    (any dilation and zero padding)."""
    return c_g == 1 and plan.kernel == (KH, KW) and plan.unit_stride and len(plan.out) == 2


def forward(x: np.ndarray, w: np.ndarray, groups: int, plan, pads, y: np.ndarray, parallel: bool) -> np.ndarray:
    """``y (n, K, ho, wo)``: the depthwise forward of :func:`applies`, written in place."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    ho, wo = plan.out
    (pt, _), (pl, _) = pads
    dh, dw = plan.dilation
    _FORWARD[int(parallel)](np.ascontiguousarray(x).reshape(n, c, h * wd), np.ascontiguousarray(w).reshape(k, KH * KW),
                            groups, h, wd, ho, wo, pt, pl, dh, dw, y.reshape(n, k, ho * wo))
    return y
