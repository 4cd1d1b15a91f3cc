"""Layers: forward, backward, parameters with gradients, train/eval mode, config round trip.

See :mod:`convlayer.layers.base` for the contract and the initialisation rules.
"""

from .base import REGISTRY, Layer, Parameter, seed
from .conv import (
    ConnectionTableConv,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvNd,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    ConvTransposeNd,
    DepthwiseConv,
    SeparableConv,
)
from .core import (
    BatchNorm,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    ReLU,
    Residual,
    ScaledTanh,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    layer_config,
    layer_from_config,
)
from .pooling import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool, Subsampling

__all__ = [
    "REGISTRY", "Layer", "Parameter", "seed", "layer_config", "layer_from_config",
    "ConvNd", "Conv1d", "Conv2d", "Conv3d", "ConvTransposeNd", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "DepthwiseConv", "SeparableConv", "ConnectionTableConv",
    "MaxPool", "AvgPool", "GlobalMaxPool", "GlobalAvgPool", "Subsampling",
    "Linear", "Flatten", "ReLU", "LeakyReLU", "Tanh", "ScaledTanh", "Sigmoid", "Softmax",
    "BatchNorm", "Dropout", "Sequential", "Residual",
]
