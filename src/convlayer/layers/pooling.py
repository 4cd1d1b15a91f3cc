"""Pooling layers: max, average (N-d, any padding spec) and global."""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..geometry import check_bool, check_int, normalize_tuple, pool_output_size, resolve_padding
from .base import Layer, Parameter, check_dtype, check_input_shape, float_dtype, register, tuples_from_config
from .conv import _padding_arg, _padding_config

__all__ = ["MaxPool", "AvgPool", "GlobalMaxPool", "GlobalAvgPool", "Subsampling"]


class _Pool(Layer):
    channels: int | None = None  # the channel count the layer's parameters fix (Subsampling's), else any

    def __init__(self, rank, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        name = type(self).__name__
        self.rank = check_int(name, "rank", rank, 1)
        self.kernel_size = normalize_tuple(kernel_size, rank, "kernel_size", minimum=1, op=name)
        self.stride = self.kernel_size if stride is None else normalize_tuple(stride, rank, "stride", minimum=1,
                                                                                 op=name)
        self.dilation = normalize_tuple(dilation, rank, "dilation", minimum=1, op=name)
        self.padding = _padding_arg(padding)
        resolve_padding(self.padding, (10**6,) * rank, self.kernel_size, self.stride, self.dilation, op=name)
        self.ceil_mode = check_bool(name, "ceil_mode", ceil_mode)
        self._x = None

    def _kw(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, dilation=self.dilation,
                    ceil_mode=self.ceil_mode)

    # The functional op and its backward, set by each subclass.
    _op = _op_backward = None

    def forward(self, x):
        self._x = x
        return self._op(x, **self._kw())

    def backward(self, grad_y):
        return self._op_backward(grad_y, self._x, **self._kw())

    def get_config(self):
        return dict(rank=self.rank, kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=_padding_config(self.padding), dilation=list(self.dilation), ceil_mode=self.ceil_mode)

    @classmethod
    def from_config(cls, config):
        return cls(**tuples_from_config(config, ("kernel_size", "stride", "dilation")))

    def output_shape(self, input_shape):
        n, c, *spatial = check_input_shape(self, input_shape, self.rank, self.channels)
        pads = resolve_padding(self.padding, spatial, self.kernel_size, self.stride, self.dilation)
        return (n, c, *pool_output_size(spatial, self.kernel_size, self.stride, pads, self.dilation, self.ceil_mode))

    def flops(self, input_shape):
        return math.prod(self.output_shape(input_shape)) * math.prod(self.kernel_size)

    def spatial_geometry(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation, padding=self.padding)


@register
class MaxPool(_Pool):
    """N-d max pooling; ``stride`` defaults to ``kernel_size``.

    >>> MaxPool(2, 2)(np.zeros((1, 6, 28, 28), np.float32)).shape
    (1, 6, 14, 14)
    """

    _op = staticmethod(F.max_pool)
    _op_backward = staticmethod(F.max_pool_backward)


@register
class AvgPool(_Pool):
    """N-d average pooling; ``count_include_pad`` as in PyTorch."""

    def __init__(self, rank, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(rank, kernel_size, stride, padding, dilation, ceil_mode)
        self.count_include_pad = check_bool("AvgPool", "count_include_pad", count_include_pad)

    def _kw(self):
        return {**super()._kw(), "count_include_pad": self.count_include_pad}

    _op = staticmethod(F.avg_pool)
    _op_backward = staticmethod(F.avg_pool_backward)

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}


class _GlobalPool(Layer):
    _op = _op_backward = None

    def forward(self, x):
        self._x = x
        return self._op(x)

    def backward(self, grad_y):
        return self._op_backward(grad_y, self._x)

    def output_shape(self, input_shape):
        shape = check_input_shape(self, input_shape)
        if len(shape) < 3:
            raise ValueError(f"{type(self).__name__}: input shape must be (N, C, S1, ...), got {shape}")
        return shape[:2]

    def flops(self, input_shape):
        return math.prod(input_shape)


@register
class GlobalMaxPool(_GlobalPool):
    """Maximum over all spatial axes: ``(N, C, *S) -> (N, C)``."""

    _op = staticmethod(F.global_max_pool)
    _op_backward = staticmethod(F.global_max_pool_backward)


@register
class GlobalAvgPool(_GlobalPool):
    """Mean over all spatial axes: ``(N, C, *S) -> (N, C)``."""

    _op = staticmethod(F.global_avg_pool)
    _op_backward = staticmethod(F.global_avg_pool_backward)


@register
class Subsampling(_Pool):
    """LeNet-5's trainable subsampling: ``y[c] = coef[c] * sum(window of x[c]) + bias[c]``.

    LeCun et al. 1998, section II.B: each S-layer unit adds its four inputs,
    multiplies by a trainable coefficient and adds a trainable bias (the
    squashing function is a separate layer here).

    >>> Subsampling(2, 6, 2)(np.zeros((1, 6, 28, 28), np.float32)).shape
    (1, 6, 14, 14)
    """

    def __init__(self, rank, channels, kernel_size, stride=None, dtype="float32"):
        super().__init__(rank, kernel_size, stride)
        self.channels = check_int("Subsampling", "channels", channels, 1)
        self.dtype = float_dtype("Subsampling", dtype)
        self.weight = Parameter(np.ones(channels, self.dtype))
        self.bias = Parameter(np.zeros(channels, self.dtype))
        self._window_sum = None

    def _expand(self, v):
        return v.reshape(1, -1, *([1] * self.rank))

    def forward(self, x):
        x = check_dtype(self, "input", x)
        check_input_shape(self, x.shape, self.rank, self.channels)  # its weights would broadcast over others
        self._x = x
        taps = math.prod(self.kernel_size)
        self._window_sum = F.avg_pool(x, self.kernel_size, self.stride) * x.dtype.type(taps)
        return self._window_sum * self._expand(self.weight.value) + self._expand(self.bias.value)

    def backward(self, grad_y):
        grad_y = check_dtype(self, "grad_y", grad_y)
        axes = (0, *range(2, grad_y.ndim))
        self.weight.grad += (grad_y * self._window_sum).sum(axis=axes)
        self.bias.grad += grad_y.sum(axis=axes)
        taps = math.prod(self.kernel_size)
        g_sum = grad_y * self._expand(self.weight.value)
        return F.avg_pool_backward(g_sum * g_sum.dtype.type(taps), self._x, self.kernel_size, self.stride)

    def get_config(self):
        return dict(rank=self.rank, channels=self.channels, kernel_size=list(self.kernel_size),
                    stride=list(self.stride), dtype=self.dtype.name)

    def flops(self, input_shape):
        return math.prod(self.output_shape(input_shape)) * (math.prod(self.kernel_size) + 2)
