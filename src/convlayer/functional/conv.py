"""N-d convolution (cross-correlation), transposed convolution, depthwise and
separable convolution, each with its backward next to it.

Definition (DESIGN.md section 1), channels-first, for any number of spatial
axes::

    y[n, k, i...] = b[k] + sum_{c, m...} xpad[n, g(k)*C_g + c, s*i + d*m ...] * w[k, c, m...]

where ``xpad`` is the input padded by ``padding`` with ``padding_mode``
(``"zeros"``/``"constant"`` positions hold ``padding_value``, 0 by default).

Transposed convolution is *defined* as the exact adjoint (input gradient)
of :func:`conv` with the same arguments, padding mode included, so
``<conv(x, w), y> == <x, conv_transpose(y, w)>`` holds for every mode.

Shapes
------
* ``conv``: input ``(N, C_in, *S)``, weight ``(C_out, C_in/groups, *k)``,
  output ``(N, C_out, *O)`` with
  ``O = floor((S + lo + hi - d*(k-1) - 1) / s) + 1``.
* ``conv_transpose``: input ``(N, C_in, *S)``, weight
  ``(C_in, C_out/groups, *k)``, output ``(N, C_out, *O)`` with
  ``O = (S-1)*s - lo - hi + d*(k-1) + 1 + output_padding``.

Unbatched inputs ``(C, *S)`` give unbatched outputs; with
``data_format="channels_last"`` inputs and outputs are ``(N, *S, C)``
(weights keep their layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _config
from ..engine import gemm
from ..engine.windows import WindowPlan, make_plan
from ..geometry import (
    _is_int,
    check_int,
    conv_output_size,
    conv_transpose_output_range,
    normalize_tuple,
    resolve_padding,
)
from ..padding import _pad, _pad_adjoint, _validate_pairs_for_modes, normalize_mode
from ._common import (
    as_float_array,
    check_grad_shape,
    check_padding_value,
    from_channels_first,
    same_dtype,
    to_channels_first,
)

__all__ = [
    "conv",
    "conv_backward",
    "conv_transpose",
    "conv_transpose_backward",
    "depthwise_conv",
    "depthwise_conv_backward",
    "separable_conv",
    "separable_conv_backward",
    "connection_conv",
    "connection_conv_backward",
]


@dataclass(frozen=True)
class _Geometry:
    """Resolved geometry of one convolution ``(N, C, *S) -> (N, K, *O)``."""

    in_shape: tuple[int, ...]  # (N, C, *S)
    out_shape: tuple[int, ...]  # (N, K, *O)
    pads: tuple[tuple[int, int], ...]
    modes: tuple[str, ...]
    groups: int
    plan: WindowPlan

    @property
    def axes(self) -> tuple[int, ...]:
        return tuple(range(2, len(self.in_shape)))


def _check_bias(op, bias_shape, channels):
    if bias_shape is not None and tuple(bias_shape) != (channels,):
        raise ValueError(
            f"{op}: bias must have shape ({channels},) (one per output channel), got {tuple(bias_shape)}"
        )


def _float_arrays(op, x, weight, bias, grad):
    """The op's arrays as float32/float64 ndarrays of one dtype (``None`` passes through)."""
    x = as_float_array(op, "input", x)
    weight = as_float_array(op, "weight", weight)
    bias = None if bias is None else as_float_array(op, "bias", bias)
    grad = None if grad is None else as_float_array(op, "grad_y", grad)
    same_dtype(op, input=x, weight=weight, bias=bias, grad_y=grad)
    return x, weight, bias, grad


def _arrays(op, x, weight, bias, grad=None):
    x, weight, bias, grad = _float_arrays(op, x, weight, bias, grad)
    if weight.ndim < 3:
        raise ValueError(
            f"{op}: weight of shape {weight.shape} must have at least 3 dims "
            f"(out_channels, in_channels/groups, *kernel_size)"
        )
    return x, weight, bias, grad


_GEOMETRIES: dict = {}
_GEOMETRIES_MAX = 1024


def _geometry(op, in_shape, w_shape, stride, padding, dilation, groups, padding_mode, *, bias_shape=None,
              dtype=np.float64) -> _Geometry:
    """Validate and resolve a convolution from ``in_shape (N, C, *S)`` and ``w_shape (K, C/g, *k)``.

    The resolution is cached per distinct call (a training loop repeats the
    same few): the key holds the ``repr`` of every argument, so ``True`` and
    ``1``, or ``2.0`` and ``2``, never share an entry and an invalid argument
    is checked (and raises) on every call. The memory-budget checks, which
    depend on the current budget, run every time.
    """
    key = (op, tuple(in_shape), tuple(w_shape), repr(stride), repr(padding), repr(dilation), repr(groups),
           repr(padding_mode), None if bias_shape is None else tuple(bias_shape))
    resolved = _GEOMETRIES.get(key)
    if resolved is None:
        resolved = _resolve(op, in_shape, w_shape, stride, padding, dilation, groups, padding_mode, bias_shape)
        if len(_GEOMETRIES) >= _GEOMETRIES_MAX:
            _GEOMETRIES.clear()
        _GEOMETRIES[key] = resolved
    shape, pads, modes, groups, padded, kernel, stride, dilation, out = resolved
    n, c, k = shape[0], shape[1], w_shape[0]
    # Before the plan: its tap list is as long as the kernel, which the padded input bounds.
    _config.check_budget(op, "padded input", (n, c, *padded), dtype)
    _config.check_budget(op, "output", (n, k, *out), dtype)
    plan = make_plan(padded, kernel, stride, dilation, out)
    _config.check_budget(op, "workspace for one batch element", (c, plan.n_taps + plan.phases, plan.length), dtype)
    return _Geometry(in_shape=shape, out_shape=(n, k, *out), pads=pads, modes=modes, groups=groups, plan=plan)


def _resolve(op, in_shape, w_shape, stride, padding, dilation, groups, padding_mode, bias_shape):
    """The checks and the arithmetic of :func:`_geometry` that depend only on its arguments."""
    rank = len(w_shape) - 2
    n, c, *spatial = in_shape
    k, c_g, *kernel = w_shape
    stride = normalize_tuple(stride, rank, "stride", minimum=1, op=op)
    dilation = normalize_tuple(dilation, rank, "dilation", minimum=1, op=op)
    groups = check_int(op, "groups", groups, 1)
    if any(v == 0 for v in kernel):
        raise ValueError(f"{op}: kernel size must be >= 1 on every axis, weight has shape {tuple(w_shape)}")
    if c % groups:
        raise ValueError(f"{op}: groups={groups} must divide in_channels={c} (input shape {tuple(in_shape)})")
    if k % groups:
        raise ValueError(f"{op}: groups={groups} must divide out_channels={k} (weight shape {tuple(w_shape)})")
    if c_g * groups != c:
        raise ValueError(
            f"{op}: input has {c} channels, but weight of shape {tuple(w_shape)} with groups={groups} "
            f"expects {c_g * groups} (weight.shape[1] * groups) (input shape {tuple(in_shape)})"
        )
    _check_bias(op, bias_shape, k)
    pads = resolve_padding(padding, spatial, kernel, stride, dilation, op=op)
    modes = normalize_mode(padding_mode, rank, op=op)
    _validate_pairs_for_modes(in_shape, tuple(range(2, 2 + rank)), pads, modes, op)
    out = conv_output_size(spatial, kernel, stride, pads, dilation, op=op)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads))
    return tuple(in_shape), pads, modes, groups, padded, tuple(kernel), stride, dilation, tuple(out)


# --- compute on validated, channels-first arrays ---------------------------------------------


def _engine_input(x, geo: _Geometry, value=0.0):
    """``(input, zero pads)`` for the engine: it zero-pads by itself (the direct kernels never materialise
    the padded input), so only the other modes, and constant padding of another value, are padded here."""
    if not value and all(m == "zeros" for m in geo.modes):
        return x, geo.pads
    return _pad(x, geo.axes, geo.pads, geo.modes, value), ((0, 0),) * len(geo.pads)


def _forward(x, w, geo: _Geometry, value=0.0) -> np.ndarray:
    xe, pads = _engine_input(x, geo, value)
    return gemm.conv_forward(xe, w, geo.groups, geo.plan, pads)  # (N, K, *O)


def _grad_input(gy, w, geo: _Geometry) -> np.ndarray:
    """The padding's value adds a constant to the output, so it has no part in the input gradient."""
    if all(m == "zeros" for m in geo.modes):
        return gemm.conv_grad_input(gy, w, geo.groups, geo.plan, geo.in_shape, geo.pads)  # (N, C, *S)
    padded = (*geo.in_shape[:2], *geo.plan.full)
    gxp = gemm.conv_grad_input(gy, w, geo.groups, geo.plan, padded, ((0, 0),) * len(geo.pads))  # (N, C, *P)
    return _pad_adjoint(gxp, geo.axes, geo.pads, geo.modes, geo.in_shape)  # (N, C, *S)


def _grad_weight(gy, x, w_shape, geo: _Geometry, value=0.0) -> np.ndarray:
    xe, pads = _engine_input(x, geo, value)
    return gemm.conv_grad_weight(gy, xe, geo.groups, geo.plan, w_shape[2:], pads)


def _add_bias(y, bias):
    if bias is not None:
        y += bias.reshape(1, -1, *([1] * (y.ndim - 2)))
    return y


def _bias_grad(gy, bias):
    return None if bias is None else gy.sum(axis=(0, *range(2, gy.ndim))).astype(gy.dtype, copy=False)


# --- convolution ------------------------------------------------------------------------------


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
         data_format="channels_first", *, padding_value=0.0):
    """N-d convolution (cross-correlation).

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, C_in, *S)``, or ``(C_in, *S)`` unbatched; ``(N, *S, C_in)``
        with ``data_format="channels_last"``.
    weight : ndarray
        ``(C_out, C_in/groups, *k)``; its rank fixes the number of spatial axes.
    bias : ndarray, optional
        ``(C_out,)``.
    stride, dilation : int or tuple of int
        One value, or one per spatial axis; >= 1.
    padding : int, str, or sequence
        Any spec of :func:`convlayer.geometry.resolve_padding`: an int, one
        int or ``(lo, hi)`` pair or string per axis, or ``"valid"``,
        ``"same"``, ``"same_lower"``, ``"full"``, ``"causal"``.
    groups : int
        Channel groups; ``groups == C_in`` is depthwise.
    padding_mode : str or sequence of str
        ``"zeros"``, ``"reflect"``, ``"symmetric"``, ``"circular"``,
        ``"replicate"`` or an alias (see :mod:`convlayer.padding`), one or
        one per spatial axis.
    data_format : {"channels_first", "channels_last"}
    padding_value : float
        The value of the ``"zeros"`` (``"constant"``) padding, 0 by default
        (:func:`convlayer.padding.pad`'s ``value``); finite, and nonzero only
        where some axis pads in that mode.

    Returns
    -------
    ndarray ``(N, C_out, *O)``, ``O = floor((S + lo + hi - d*(k-1) - 1)/s) + 1``.

    Raises
    ------
    TypeError
        Non-float or mixed dtypes, non-int geometry.
    ValueError
        Any shape rule broken (the message names it), or an output over the
        memory budget.

    Examples
    --------
    >>> x = np.zeros((8, 3, 32, 32), np.float32)
    >>> w = np.zeros((16, 3, 5, 5), np.float32)
    >>> conv(x, w, stride=2, padding="same").shape
    (8, 16, 16, 16)
    """
    op = "conv"
    x, weight, bias, _ = _arrays(op, x, weight, bias)
    rank = weight.ndim - 2
    x, batched = to_channels_first(op, x, rank, data_format)
    geo = _geometry(op, x.shape, weight.shape, stride, padding, dilation, groups, padding_mode,
                    bias_shape=_shape(bias), dtype=x.dtype)
    y = _add_bias(_forward(x, weight, geo, check_padding_value(op, padding_value, geo.modes)), bias)
    return from_channels_first(y, batched, data_format)


def conv_backward(grad_y, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                  padding_mode="zeros", data_format="channels_first", grads=("input", "weight", "bias"), *,
                  padding_value=0.0):
    """Gradients of :func:`conv`: ``(grad_x, grad_weight, grad_bias)``.

    ``grad_y`` has the shape of ``conv``'s output; ``grad_bias`` is ``None``
    when ``bias`` is ``None``. Padded positions fold back through the exact
    adjoint of the padding mode. ``grads`` names the gradients to compute
    (the others are returned as ``None``): a network's first layer needs no
    input gradient.
    """
    op = "conv_backward"
    want = _check_grads(op, grads)
    x, weight, bias, grad_y = _arrays(op, x, weight, bias, grad_y)
    rank = weight.ndim - 2
    x, batched = to_channels_first(op, x, rank, data_format)
    gy, _ = to_channels_first(op, grad_y, rank, data_format, name="grad_y")
    geo = _geometry(op, x.shape, weight.shape, stride, padding, dilation, groups, padding_mode,
                    bias_shape=_shape(bias), dtype=x.dtype)
    check_grad_shape(op, gy, geo.out_shape)
    value = check_padding_value(op, padding_value, geo.modes)
    gx = from_channels_first(_grad_input(gy, weight, geo), batched, data_format) if "input" in want else None
    gw = _grad_weight(gy, x, weight.shape, geo, value) if "weight" in want else None
    gb = _bias_grad(gy, bias) if "bias" in want else None
    return gx, gw, gb


_GRADS = ("input", "weight", "bias")


def _check_grads(op, grads):
    if isinstance(grads, str) or not set(grads) <= set(_GRADS):
        raise ValueError(f"{op}: grads={grads!r} must be a collection of names from {_GRADS}")
    return set(grads)


# --- transposed convolution -------------------------------------------------------------------


@dataclass(frozen=True)
class _TransposedGeometry:
    conv: _Geometry  # the forward conv whose adjoint this is: (N, C_out, *O) -> (N, C_in, *S_ext)
    in_spatial: tuple[int, ...]  # S, the transposed op's input spatial size

    def extend(self, x):
        """Zero-extend ``x (N, C_in, *S)`` to the conv's output size (when output_padding >= stride)."""
        target = self.conv.out_shape[2:]
        if tuple(x.shape[2:]) == target:
            return x
        out = np.zeros((*x.shape[:2], *target), dtype=x.dtype)
        out[(slice(None), slice(None), *(slice(0, s) for s in x.shape[2:]))] = x
        return out

    def crop(self, y):
        return y[(slice(None), slice(None), *(slice(0, s) for s in self.in_spatial))]


def _transposed_geometry(op, in_shape, w_shape, stride, padding, output_padding, dilation, groups,
                         padding_mode, output_size, bias_shape, dtype) -> _TransposedGeometry:
    rank = len(w_shape) - 2
    n, c_in, *spatial = in_shape
    c_in_w, c_out_g, *kernel = w_shape
    groups = check_int(op, "groups", groups, 1)
    stride = normalize_tuple(stride, rank, "stride", minimum=1, op=op)
    dilation = normalize_tuple(dilation, rank, "dilation", minimum=1, op=op)
    output_padding = normalize_tuple(output_padding, rank, "output_padding", minimum=0, op=op)
    if c_in != c_in_w:
        raise ValueError(
            f"{op}: input has {c_in} channels, but weight of shape {tuple(w_shape)} expects {c_in_w} "
            f"(weight.shape[0] of a transposed convolution is in_channels) (input shape {tuple(in_shape)})"
        )
    if c_in % groups:
        raise ValueError(f"{op}: groups={groups} must divide in_channels={c_in} (input shape {tuple(in_shape)})")
    c_out = c_out_g * groups
    _check_bias(op, bias_shape, c_out)
    for i, (op_, s, d) in enumerate(zip(output_padding, stride, dilation)):
        if op_ >= max(s, d):
            raise ValueError(
                f"{op}: output_padding={op_} on spatial axis {i} must be smaller than stride ({s}) or dilation ({d})"
            )
    if any(v == 0 for v in kernel):
        raise ValueError(f"{op}: kernel size must be >= 1 on every axis, weight has shape {tuple(w_shape)}")
    # Output size: from output_size, from "same" (S*s), or from the formula.
    size_dependent = _padding_depends_on_size(padding)
    if output_size is not None:
        if any(output_padding):
            raise ValueError(f"{op}: give output_size or output_padding, not both")
        if isinstance(output_size, (tuple, list)) and len(output_size) == rank + 2:
            output_size = tuple(output_size)[2:]
        target = normalize_tuple(output_size, rank, "output_size", minimum=1, op=op)
    elif size_dependent:
        if any(output_padding):
            raise ValueError(f"{op}: output_padding cannot be used with padding={padding!r}; use output_size")
        target = tuple(s * st for s, st in zip(spatial, stride))
    else:
        pads0 = resolve_padding(padding, spatial, kernel, stride, dilation, op=op)
        target = tuple(
            (s - 1) * st - lo - hi + d * (k - 1) + 1 + o
            for s, st, (lo, hi), d, k, o in zip(spatial, stride, pads0, dilation, kernel, output_padding)
        )
    pads = resolve_padding(padding, target, kernel, stride, dilation, op=op)
    valid = conv_transpose_output_range(spatial, kernel, stride, pads, dilation)
    for i, (t, (lo_size, hi_size)) in enumerate(zip(target, valid)):
        if not lo_size <= t <= hi_size or t < 1:
            what = "output_size" if output_size is not None else "output size"
            raise ValueError(
                f"{op}: {what} {t} on spatial axis {i} is impossible; valid sizes for input {spatial[i]}, "
                f"kernel {kernel[i]}, stride {stride[i]}, padding {pads[i]}, dilation {dilation[i]} are "
                f"{max(lo_size, 1)}..{hi_size}" + ("" if hi_size >= 1 else " (none: use less padding)")
            )
    geo = _geometry(op, (n, c_out, *target), w_shape, stride, pads, dilation, groups, padding_mode, dtype=dtype)
    return _TransposedGeometry(conv=geo, in_spatial=tuple(spatial))


def _padding_depends_on_size(padding) -> bool:
    specs = [padding] if isinstance(padding, str) or _is_int(padding) else list(padding) if isinstance(padding, (tuple, list)) else [padding]
    return any(isinstance(p, str) and p in ("same", "same_lower") for p in specs)


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                   padding_mode="zeros", output_size=None, data_format="channels_first"):
    """Transposed (fractionally strided) convolution: the exact adjoint of :func:`conv`.

    Parameters
    ----------
    x : ndarray
        ``(N, C_in, *S)`` (or unbatched / channels-last as in :func:`conv`).
    weight : ndarray
        ``(C_in, C_out/groups, *k)`` (PyTorch/ONNX layout).
    bias : ndarray, optional
        ``(C_out,)``.
    stride, padding, dilation, groups, padding_mode
        As for the forward :func:`conv` whose adjoint this is. ``"same"``
        makes the output ``S * stride``.
    output_padding : int or tuple
        Extra size at the end, ``0 <= output_padding < max(stride, dilation)``:
        several input sizes of a strided conv give the same output size,
        this picks one.
    output_size : tuple, optional
        The wanted spatial output size instead of ``output_padding``; an
        impossible size is an error naming the valid range.

    Returns
    -------
    ndarray ``(N, C_out, *O)``, ``O = (S-1)*s - lo - hi + d*(k-1) + 1 + output_padding``.

    Examples
    --------
    >>> x = np.zeros((1, 128, 8, 8), np.float32)
    >>> w = np.zeros((128, 64, 4, 4), np.float32)
    >>> conv_transpose(x, w, stride=2, padding=1).shape
    (1, 64, 16, 16)
    """
    op = "conv_transpose"
    x, weight, bias, _ = _arrays(op, x, weight, bias)
    rank = weight.ndim - 2
    x, batched = to_channels_first(op, x, rank, data_format)
    tgeo = _transposed_geometry(op, x.shape, weight.shape, stride, padding, output_padding, dilation, groups,
                                padding_mode, output_size, _shape(bias), x.dtype)
    y = _grad_input(tgeo.extend(x), weight, tgeo.conv)
    return from_channels_first(_add_bias(y, bias), batched, data_format)


def conv_transpose_backward(grad_y, x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1,
                            groups=1, padding_mode="zeros", output_size=None, data_format="channels_first",
                            grads=("input", "weight", "bias")):
    """Gradients of :func:`conv_transpose`: ``(grad_x, grad_weight, grad_bias)`` (``grads`` as in :func:`conv_backward`)."""
    op = "conv_transpose_backward"
    want = _check_grads(op, grads)
    x, weight, bias, grad_y = _arrays(op, x, weight, bias, grad_y)
    rank = weight.ndim - 2
    x, batched = to_channels_first(op, x, rank, data_format)
    gy, _ = to_channels_first(op, grad_y, rank, data_format, name="grad_y")
    tgeo = _transposed_geometry(op, x.shape, weight.shape, stride, padding, output_padding, dilation, groups,
                                padding_mode, output_size, _shape(bias), x.dtype)
    check_grad_shape(op, gy, tgeo.conv.in_shape)
    gx = None
    if "input" in want:
        gx = from_channels_first(np.ascontiguousarray(tgeo.crop(_forward(gy, weight, tgeo.conv))), batched,
                                 data_format)
    gw = _grad_weight(tgeo.extend(x), gy, weight.shape, tgeo.conv) if "weight" in want else None
    gb = _bias_grad(gy, bias) if "bias" in want else None
    return gx, gw, gb


def _shape(a):
    return None if a is None else a.shape


# --- depthwise and depthwise-separable --------------------------------------------------------


def _depthwise_groups(op, x, weight, data_format):
    x = np.asarray(x)
    weight = np.asarray(weight)
    if weight.ndim < 3:
        raise ValueError(f"{op}: weight of shape {weight.shape} must be (C * multiplier, 1, *kernel_size)")
    c = x.shape[-1] if data_format == "channels_last" else x.shape[1 if x.ndim == weight.ndim else 0]
    if weight.shape[1] != 1 or (c and weight.shape[0] % c):
        raise ValueError(
            f"{op}: depthwise weight must have shape (C * multiplier, 1, *kernel_size) for an input "
            f"with C={c} channels, got {weight.shape}"
        )
    return max(c, 1)


def depthwise_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, padding_mode="zeros",
                   data_format="channels_first", *, padding_value=0.0):
    """Depthwise convolution: each input channel convolved with its own ``multiplier`` kernels.

    ``weight`` is ``(C * multiplier, 1, *k)``; output channel
    ``c * multiplier + j`` is input channel ``c`` with kernel ``j``. Same
    as :func:`conv` with ``groups = C``.
    """
    groups = _depthwise_groups("depthwise_conv", x, weight, data_format)
    return conv(x, weight, bias, stride, padding, dilation, groups, padding_mode, data_format,
                padding_value=padding_value)


def depthwise_conv_backward(grad_y, x, weight, bias=None, stride=1, padding=0, dilation=1, padding_mode="zeros",
                            data_format="channels_first", *, padding_value=0.0):
    """Gradients of :func:`depthwise_conv`: ``(grad_x, grad_weight, grad_bias)``."""
    groups = _depthwise_groups("depthwise_conv_backward", x, weight, data_format)
    return conv_backward(grad_y, x, weight, bias, stride, padding, dilation, groups, padding_mode, data_format,
                         padding_value=padding_value)


def separable_conv(x, depthwise_weight, pointwise_weight, bias=None, stride=1, padding=0, dilation=1,
                   padding_mode="zeros", data_format="channels_first", *, padding_value=0.0):
    """Depthwise-separable convolution: depthwise ``(C*M, 1, *k)`` then pointwise ``(C_out, C*M, 1, ...)``.

    Stride, padding, dilation and ``padding_value`` apply to the depthwise step; ``bias``
    (``(C_out,)``) to the pointwise step.
    """
    _check_pointwise("separable_conv", pointwise_weight)
    mid = depthwise_conv(x, depthwise_weight, None, stride, padding, dilation, padding_mode, data_format,
                         padding_value=padding_value)
    return conv(mid, pointwise_weight, bias, data_format=data_format)


def _check_pointwise(op, weight):
    shape = np.shape(weight)
    if len(shape) < 3 or any(v != 1 for v in shape[2:]):
        raise ValueError(f"{op}: pointwise weight must have shape (C_out, C * multiplier, 1, ...), a 1x1 kernel, "
                         f"got {tuple(shape)}")


def separable_conv_backward(grad_y, x, depthwise_weight, pointwise_weight, bias=None, stride=1, padding=0,
                            dilation=1, padding_mode="zeros", data_format="channels_first", *, padding_value=0.0):
    """Gradients of :func:`separable_conv`: ``(grad_x, grad_depthwise, grad_pointwise, grad_bias)``."""
    _check_pointwise("separable_conv_backward", pointwise_weight)
    mid = depthwise_conv(x, depthwise_weight, None, stride, padding, dilation, padding_mode, data_format,
                         padding_value=padding_value)
    g_mid, g_pw, g_b = conv_backward(grad_y, mid, pointwise_weight, bias, data_format=data_format)
    g_x, g_dw, _ = depthwise_conv_backward(g_mid, x, depthwise_weight, None, stride, padding, dilation,
                                           padding_mode, data_format, padding_value=padding_value)
    return g_x, g_dw, g_pw, g_b


# --- convolution with a connection table ------------------------------------------------------


def _table_setup(op, x, weight, table, bias, grad=None):
    x, weight, bias, grad = _float_arrays(op, x, weight, bias, grad)
    if weight.ndim < 2:
        raise ValueError(f"{op}: weight of shape {weight.shape} must be (connections, *kernel_size)")
    rank = weight.ndim - 1
    x, batched = to_channels_first(op, x, rank, "channels_first")
    c = x.shape[1]
    if not isinstance(table, (list, tuple)) or not table:
        raise ValueError(f"{op}: table must be a non-empty list of input-map lists")
    rows_total = 0
    by_input = [([], []) for _ in range(c)]
    for j, inputs in enumerate(table):
        if len(set(inputs)) != len(inputs) or not all(_is_int(i) and 0 <= i < c for i in inputs):
            raise ValueError(f"{op}: table[{j}]={inputs!r} must list distinct input maps in [0, {c})")
        for i in inputs:
            by_input[i][0].append(rows_total)
            by_input[i][1].append(j)
            rows_total += 1
    if weight.shape[0] != rows_total:
        raise ValueError(f"{op}: weight has {weight.shape[0]} rows but the table lists {rows_total} connections")
    geo = _geometry(op, x.shape, (len(table), c, *weight.shape[1:]), 1, 0, 1, 1, "zeros",
                    bias_shape=_shape(bias), dtype=x.dtype)
    by_input = [(np.array(r, dtype=np.intp), np.array(o, dtype=np.intp)) for r, o in by_input]
    return x, weight, bias, grad, batched, geo, by_input


def connection_conv(x, weight, table, bias=None):
    """Valid convolution in which output map ``j`` sees only the input maps ``table[j]``.

    ``weight`` is ``(connections, *kernel_size)``, one row per (output,
    input) pair in table order. Only listed connections are computed.
    """
    x, weight, bias, _, batched, geo, by_input = _table_setup("connection_conv", x, weight, table, bias)
    w2 = weight.reshape(weight.shape[0], -1)  # (connections, T)
    y = gemm.table_conv_forward(x, w2, len(table), by_input, geo.plan)
    return from_channels_first(_add_bias(y, bias), batched, "channels_first")


def connection_conv_backward(grad_y, x, weight, table, bias=None):
    """Gradients of :func:`connection_conv`: ``(grad_x, grad_weight, grad_bias)``."""
    op = "connection_conv_backward"
    x, weight, bias, gy, batched, geo, by_input = _table_setup(op, x, weight, table, bias, grad_y)
    gy, _ = to_channels_first(op, gy, weight.ndim - 1, "channels_first", name="grad_y")
    check_grad_shape(op, gy, geo.out_shape)
    gx, gw = gemm.table_conv_backward(gy, x, weight.reshape(weight.shape[0], -1), by_input, geo.plan)
    return from_channels_first(gx, batched, "channels_first"), gw.reshape(weight.shape), _bias_grad(gy, bias)
