"""Stateless ops, each with its backward next to it.

All ops take NumPy arrays of float32 or float64, channels-first
``(N, C, *spatial)`` by default, and validate every argument before any
large allocation.
"""

from ..padding import pad, pad_adjoint
from .conv import (
    connection_conv,
    connection_conv_backward,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
    depthwise_conv,
    depthwise_conv_backward,
    separable_conv,
    separable_conv_backward,
)
from .pooling import (
    avg_pool,
    avg_pool_backward,
    global_avg_pool,
    global_avg_pool_backward,
    global_max_pool,
    global_max_pool_backward,
    max_pool,
    max_pool_backward,
)

__all__ = [
    "pad",
    "pad_adjoint",
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
    "max_pool",
    "max_pool_backward",
    "avg_pool",
    "avg_pool_backward",
    "global_max_pool",
    "global_max_pool_backward",
    "global_avg_pool",
    "global_avg_pool_backward",
]
