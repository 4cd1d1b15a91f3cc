"""Convolution layers: one N-d implementation, rank aliases that only fix the rank."""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..functional._common import check_padding_value
from ..geometry import (check_bool, check_int, conv_output_size, conv_transpose_output_size, normalize_tuple,
                        resolve_padding)
from ..padding import normalize_mode
from .base import Layer, Parameter, check_input_shape, float_dtype, init_weight, register, tuples_from_config

__all__ = [
    "ConvNd", "Conv1d", "Conv2d", "Conv3d",
    "ConvTransposeNd", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "DepthwiseConv", "SeparableConv", "ConnectionTableConv",
]


def _padding_config(padding):
    """Padding as JSON-able data (tuples become lists)."""
    if isinstance(padding, (tuple, list)):
        return [_padding_config(p) for p in padding]
    return padding


def _value_config(value) -> dict:
    """``padding_value`` for a layer's config: absent at 0, so configs and files stay as they were before it."""
    return {"padding_value": value} if value else {}


def _padding_arg(padding):
    if isinstance(padding, list):
        return tuple(_padding_arg(p) for p in padding)
    return padding


@register
class ConvNd(Layer):
    """N-d convolution layer (cross-correlation) with a learned kernel and bias.

    Parameters
    ----------
    rank : int
        Number of spatial axes (1 audio/text, 2 images, 3 volumes/video, ...).
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or tuple
    padding : int, str or sequence
        Any padding spec of :func:`convlayer.functional.conv`.
    groups : int
    bias : bool
    padding_mode : str or sequence of str
    init : {"kaiming_uniform", "glorot_uniform", "lecun_uniform"}
    dtype : float32 (default) or float64
    padding_value : float
        The value of ``"zeros"`` (``"constant"``) padding, 0 by default (see
        :func:`convlayer.functional.conv`). Not on the transposed layers.

    Shape
    -----
    ``(N, in_channels, *S) -> (N, out_channels, *O)`` with
    ``O = floor((S + lo + hi - dilation*(kernel_size-1) - 1) / stride) + 1``.

    Examples
    --------
    >>> layer = Conv2d(3, 16, 5, padding="same")
    >>> layer(np.zeros((8, 3, 32, 32), np.float32)).shape
    (8, 16, 32, 32)
    """

    _fixed_rank = False  # True on the rank aliases, whose config has no "rank"

    #: Set to False on a network's first layer: its input gradient is then
    #: not computed and ``backward`` returns ``None``.
    input_grad = True

    def __init__(self, rank, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", init="kaiming_uniform", dtype="float32", padding_value=0.0):
        self.rank = check_int(type(self).__name__, "rank", rank, 1)
        name = type(self).__name__
        self.in_channels = check_int(name, "in_channels", in_channels, 0)
        self.out_channels = check_int(name, "out_channels", out_channels, 0)
        self.kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size", minimum=1, op=name)
        self.stride = normalize_tuple(stride, self.rank, "stride", minimum=1, op=name)
        self.dilation = normalize_tuple(dilation, self.rank, "dilation", minimum=1, op=name)
        self.groups = check_int(name, "groups", groups, 1)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{name}: groups={self.groups} must divide in_channels={self.in_channels} and "
                f"out_channels={self.out_channels}"
            )
        self.padding = _padding_arg(padding)
        # Validate the padding spec now (sizes do not matter for the check).
        resolve_padding(self.padding, (10**6,) * self.rank, self.kernel_size, self.stride, self.dilation, op=name)
        self.padding_mode = padding_mode
        self.padding_value = check_padding_value(name, padding_value, normalize_mode(padding_mode, self.rank, op=name))
        self.init = init
        self.dtype = float_dtype(name, dtype)
        self._build(check_bool(name, "bias", bias))
        self._x = None

    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _build(self, bias):
        shape = self._weight_shape()
        fan_in = shape[1] * math.prod(self.kernel_size)
        fan_out = shape[0] * math.prod(self.kernel_size)
        self.weight = Parameter(init_weight(shape, fan_in, fan_out, self.init, self.dtype))
        self.bias = Parameter(np.zeros(self.out_channels, self.dtype)) if bias else None

    def _geometry_kw(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    padding_mode=self.padding_mode)

    def _kw(self):
        return {**self._geometry_kw(), "padding_value": self.padding_value}

    # The functional op and its backward; the transposed layer swaps in its own pair.
    _op = staticmethod(F.conv)
    _op_backward = staticmethod(F.conv_backward)

    def forward(self, x):
        self._x = x
        return self._op(x, self.weight.value, None if self.bias is None else self.bias.value, **self._kw())

    def backward(self, grad_y):
        grads = ("input", "weight", "bias") if self.input_grad else ("weight", "bias")
        gx, gw, gb = self._op_backward(grad_y, self._x, self.weight.value,
                                       None if self.bias is None else self.bias.value, **self._kw(), grads=grads)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx

    def get_config(self):
        config = dict(in_channels=self.in_channels, out_channels=self.out_channels,
                      kernel_size=list(self.kernel_size), stride=list(self.stride),
                      padding=_padding_config(self.padding), dilation=list(self.dilation), groups=self.groups,
                      bias=self.bias is not None, padding_mode=_padding_config(self.padding_mode),
                      init=self.init, dtype=self.dtype.name)
        config.update(_value_config(self.padding_value))
        if not self._fixed_rank:
            config = {"rank": self.rank, **config}
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**tuples_from_config(config, ("kernel_size", "stride", "dilation", "padding_mode",
                                                 "output_padding")))

    def output_shape(self, input_shape):
        n, _, *spatial = check_input_shape(self, input_shape, self.rank, self.in_channels)
        pads = resolve_padding(self.padding, spatial, self.kernel_size, self.stride, self.dilation)
        return (n, self.out_channels, *conv_output_size(spatial, self.kernel_size, self.stride, pads, self.dilation))

    def flops(self, input_shape):
        out = self.output_shape(input_shape)
        return 2 * math.prod(out) * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def spatial_geometry(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation, padding=self.padding)


def _rank_alias(base, rank, doc_name):
    class Alias(base):
        __doc__ = f"{doc_name}: :class:`{base.__name__}` with rank {rank}. See its documentation."

        def __init__(self, *args, **kwargs):
            super().__init__(rank, *args, **kwargs)

    Alias._fixed_rank = True
    Alias.__name__ = Alias.__qualname__ = doc_name
    return register(Alias)


Conv1d = _rank_alias(ConvNd, 1, "Conv1d")
Conv2d = _rank_alias(ConvNd, 2, "Conv2d")
Conv3d = _rank_alias(ConvNd, 3, "Conv3d")


@register
class ConvTransposeNd(ConvNd):
    """N-d transposed (fractionally strided) convolution layer: the adjoint of :class:`ConvNd`.

    Weight ``(in_channels, out_channels/groups, *kernel_size)``; extra
    arguments ``output_padding`` (or ``output_size`` at call time through
    :func:`convlayer.functional.conv_transpose`).

    Shape
    -----
    ``O = (S-1)*stride - lo - hi + dilation*(kernel_size-1) + 1 + output_padding``.

    >>> ConvTranspose2d(16, 8, 4, stride=2, padding=1)(np.zeros((1, 16, 7, 7), np.float32)).shape
    (1, 8, 14, 14)
    """

    def __init__(self, rank, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", init="kaiming_uniform", dtype="float32"):
        self.output_padding = normalize_tuple(output_padding, rank, "output_padding", minimum=0,
                                              op=type(self).__name__)
        super().__init__(rank, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, init, dtype)

    def _weight_shape(self):
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    def _build(self, bias):
        shape = self._weight_shape()
        fan_in = shape[0] // self.groups * math.prod(self.kernel_size)
        fan_out = shape[1] * math.prod(self.kernel_size)
        self.weight = Parameter(init_weight(shape, fan_in, fan_out, self.init, self.dtype))
        self.bias = Parameter(np.zeros(self.out_channels, self.dtype)) if bias else None

    _op = staticmethod(F.conv_transpose)
    _op_backward = staticmethod(F.conv_transpose_backward)

    def _kw(self):
        return {**self._geometry_kw(), "output_padding": self.output_padding}

    def get_config(self):
        config = super().get_config()
        config["output_padding"] = list(self.output_padding)
        return config

    def output_shape(self, input_shape):
        n, _, *spatial = check_input_shape(self, input_shape, self.rank, self.in_channels)
        if isinstance(self.padding, str) and self.padding in ("same", "same_lower"):
            return (n, self.out_channels, *(s * st for s, st in zip(spatial, self.stride)))
        pads = resolve_padding(self.padding, spatial, self.kernel_size, self.stride, self.dilation)
        out = conv_transpose_output_size(spatial, self.kernel_size, self.stride, pads, self.dilation,
                                         self.output_padding)
        return (n, self.out_channels, *out)

    def flops(self, input_shape):
        return 2 * math.prod(input_shape) * (self.out_channels // self.groups) * math.prod(self.kernel_size)


ConvTranspose1d = _rank_alias(ConvTransposeNd, 1, "ConvTranspose1d")
ConvTranspose2d = _rank_alias(ConvTransposeNd, 2, "ConvTranspose2d")
ConvTranspose3d = _rank_alias(ConvTransposeNd, 3, "ConvTranspose3d")


@register
class DepthwiseConv(ConvNd):
    """Depthwise convolution: each channel with its own ``depth_multiplier`` kernels (``groups = channels``).

    >>> DepthwiseConv(2, 8, 3, depth_multiplier=2, padding=1)(np.zeros((1, 8, 5, 5), np.float32)).shape
    (1, 16, 5, 5)
    """

    def __init__(self, rank, channels, kernel_size, depth_multiplier=1, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", init="kaiming_uniform", dtype="float32", padding_value=0.0):
        check_int("DepthwiseConv", "depth_multiplier", depth_multiplier, 1)
        super().__init__(rank, channels, channels * depth_multiplier, kernel_size, stride, padding, dilation,
                         max(channels, 1), bias, padding_mode, init, dtype, padding_value)
        self.depth_multiplier = depth_multiplier

    def get_config(self):
        config = super().get_config()
        return dict(rank=self.rank, channels=self.in_channels, kernel_size=config["kernel_size"],
                    depth_multiplier=self.depth_multiplier, stride=config["stride"], padding=config["padding"],
                    dilation=config["dilation"], bias=config["bias"], padding_mode=config["padding_mode"],
                    init=self.init, dtype=self.dtype.name, **_value_config(self.padding_value))


@register
class SeparableConv(Layer):
    """Depthwise-separable convolution: :class:`DepthwiseConv` then a pointwise (1x1) convolution.

    >>> SeparableConv(2, 8, 16, 3, padding="same")(np.zeros((1, 8, 5, 5), np.float32)).shape
    (1, 16, 5, 5)
    """

    def __init__(self, rank, in_channels, out_channels, kernel_size, depth_multiplier=1, stride=1, padding=0,
                 dilation=1, bias=True, padding_mode="zeros", init="kaiming_uniform", dtype="float32",
                 padding_value=0.0):
        self.depthwise = DepthwiseConv(rank, in_channels, kernel_size, depth_multiplier, stride, padding, dilation,
                                       False, padding_mode, init, dtype, padding_value)
        self.pointwise = ConvNd(rank, in_channels * depth_multiplier, out_channels, 1, bias=bias, init=init,
                                dtype=dtype)

    def children(self):
        return {"depthwise": self.depthwise, "pointwise": self.pointwise}

    def forward(self, x):
        return self.pointwise.forward(self.depthwise.forward(x))

    def backward(self, grad_y):
        return self.depthwise.backward(self.pointwise.backward(grad_y))

    def get_config(self):
        d = self.depthwise
        return dict(rank=d.rank, in_channels=d.in_channels, out_channels=self.pointwise.out_channels,
                    kernel_size=list(d.kernel_size), depth_multiplier=d.depth_multiplier, stride=list(d.stride),
                    padding=_padding_config(d.padding), dilation=list(d.dilation),
                    bias=self.pointwise.bias is not None, padding_mode=_padding_config(d.padding_mode),
                    init=d.init, dtype=d.dtype.name, **_value_config(d.padding_value))

    @classmethod
    def from_config(cls, config):
        return cls(**tuples_from_config(config, ("kernel_size", "stride", "dilation", "padding_mode")))

    def output_shape(self, input_shape):
        return self.pointwise.output_shape(self.depthwise.output_shape(input_shape))

    def flops(self, input_shape):
        mid = self.depthwise.output_shape(input_shape)
        return self.depthwise.flops(input_shape) + self.pointwise.flops(mid)

    def spatial_geometry(self):
        return self.depthwise.spatial_geometry()


@register
class ConnectionTableConv(Layer):
    """Convolution in which output map ``j`` sees only the input maps ``table[j]`` (LeNet-5's C3).

    Only the listed connections have weights and cost arithmetic (one GEMM
    per input map over the shared patch matrix, see
    :func:`convlayer.functional.connection_conv`). The weight is stored
    flat, ``(sum(len(t) for t in table), *kernel_size)``, row ``r`` being
    the ``r``-th connection in table order.

    >>> layer = ConnectionTableConv(2, 3, [[0, 1], [1, 2], [0, 1, 2]], 3)
    >>> layer(np.zeros((1, 3, 8, 8), np.float32)).shape, layer.weight.value.shape
    ((1, 3, 6, 6), (7, 3, 3))
    """

    def __init__(self, rank, in_channels, table, kernel_size, bias=True, init="kaiming_uniform", dtype="float32"):
        name = "ConnectionTableConv"
        self.rank = check_int(name, "rank", rank, 1)
        self.in_channels = check_int(name, "in_channels", in_channels, 1)
        if not isinstance(table, (list, tuple)) or not table:
            raise ValueError(f"{name}: table must be a non-empty list of input-index lists")
        self.table = []
        for j, inputs in enumerate(table):
            if (not isinstance(inputs, (list, tuple)) or not inputs
                    or not all(isinstance(i, int) and 0 <= i < in_channels for i in inputs)
                    or len(set(inputs)) != len(inputs)):
                raise ValueError(f"{name}: table[{j}]={inputs!r} must list distinct input maps in [0, {in_channels})")
            self.table.append([int(i) for i in inputs])
        self.out_channels = len(self.table)
        self.kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size", minimum=1, op=name)
        self.init = init
        self.dtype = float_dtype(name, dtype)
        taps = math.prod(self.kernel_size)
        rows = sum(len(t) for t in self.table)
        fan_in = max(len(t) for t in self.table) * taps
        self.weight = Parameter(init_weight((rows, *self.kernel_size), fan_in, taps, init, self.dtype))
        self.bias = Parameter(np.zeros(self.out_channels, self.dtype)) if check_bool(name, "bias", bias) else None
        self._x = None

    def forward(self, x):
        self._x = x
        return F.connection_conv(x, self.weight.value, self.table, None if self.bias is None else self.bias.value)

    def backward(self, grad_y):
        gx, gw, gb = F.connection_conv_backward(grad_y, self._x, self.weight.value, self.table,
                                                None if self.bias is None else self.bias.value)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx

    def get_config(self):
        return dict(rank=self.rank, in_channels=self.in_channels, table=[list(t) for t in self.table],
                    kernel_size=list(self.kernel_size), bias=self.bias is not None, init=self.init,
                    dtype=self.dtype.name)

    def output_shape(self, input_shape):
        n, _, *spatial = check_input_shape(self, input_shape, self.rank, self.in_channels)
        pads = ((0, 0),) * self.rank
        return (n, self.out_channels, *conv_output_size(spatial, self.kernel_size, (1,) * self.rank, pads,
                                                         (1,) * self.rank))

    def flops(self, input_shape):
        out = self.output_shape(input_shape)
        return 2 * math.prod(out[2:]) * out[0] * self.weight.value.size

    def spatial_geometry(self):
        return dict(kernel_size=self.kernel_size, stride=(1,) * self.rank, dilation=(1,) * self.rank, padding=0)
