"""Dense, shape, activation, normalisation and container layers."""

from __future__ import annotations

import math

import numpy as np

from ..engine import blas
from ..geometry import _is_int, check_bool, check_int, check_real
from .base import (REGISTRY, Layer, Parameter, check_dtype, check_input_shape, float_dtype, init_rng, init_weight,
                   register)

__all__ = [
    "Linear", "Flatten", "ReLU", "LeakyReLU", "Tanh", "ScaledTanh", "Sigmoid", "Softmax",
    "BatchNorm", "Dropout", "Sequential", "Residual", "layer_from_config", "layer_config",
]


def _product(a, b):
    """``a @ b`` through the engine's BLAS helper, which never leaves BLAS worker threads spinning to slow
    the compiled kernels of the next layer (see :mod:`convlayer.engine.blas`)."""
    return blas.matmul(a, b, np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b)))


@register
class Linear(Layer):
    """Fully connected layer ``y = x @ W.T + b``, ``W`` of shape ``(out_features, in_features)``.

    >>> Linear(120, 84)(np.zeros((5, 120), np.float32)).shape
    (5, 84)
    """

    def __init__(self, in_features, out_features, bias=True, init="kaiming_uniform", dtype="float32"):
        self.in_features = check_int("Linear", "in_features", in_features, 1)
        self.out_features = check_int("Linear", "out_features", out_features, 1)
        self.init = init
        self.dtype = float_dtype("Linear", dtype)
        self.weight = Parameter(init_weight((out_features, in_features), in_features, out_features, init, self.dtype))
        self.bias = Parameter(np.zeros(out_features, self.dtype)) if check_bool("Linear", "bias", bias) else None
        self._x = None

    def forward(self, x):
        x = check_dtype(self, "input", x)
        check_input_shape(self, x.shape, 0, self.in_features)
        self._x = x
        y = _product(x, self.weight.value.T)
        if self.bias is not None:
            y += self.bias.value
        return y

    def backward(self, grad_y):
        grad_y = check_dtype(self, "grad_y", grad_y)
        self.weight.grad += _product(grad_y.T, self._x)
        if self.bias is not None:
            self.bias.grad += grad_y.sum(axis=0)
        return _product(grad_y, self.weight.value)

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias is not None,
                    init=self.init, dtype=self.dtype.name)

    def output_shape(self, input_shape):
        return (check_input_shape(self, input_shape, 0, self.in_features)[0], self.out_features)

    def flops(self, input_shape):
        return 2 * input_shape[0] * self.in_features * self.out_features


@register
class Flatten(Layer):
    """``(N, ...) -> (N, prod(...))``."""

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: an empty batch has no size to infer

    def backward(self, grad_y):
        return grad_y.reshape(self._shape)

    def output_shape(self, input_shape):
        return (input_shape[0], math.prod(input_shape[1:]))


class _Elementwise(Layer):
    def output_shape(self, input_shape):
        return tuple(input_shape)

    def flops(self, input_shape):
        return math.prod(input_shape)


@register
class ReLU(_Elementwise):
    """``max(x, 0)``."""

    def forward(self, x):
        self._mask = x > 0
        return x * self._mask

    def backward(self, grad_y):
        return grad_y * self._mask


@register
class LeakyReLU(_Elementwise):
    """``x if x > 0 else negative_slope * x``."""

    def __init__(self, negative_slope=0.01):
        self.negative_slope = check_real("LeakyReLU", "negative_slope", negative_slope)

    def forward(self, x):
        self._mask = x > 0
        return np.where(self._mask, x, x * x.dtype.type(self.negative_slope))

    def backward(self, grad_y):
        return np.where(self._mask, grad_y, grad_y * grad_y.dtype.type(self.negative_slope))

    def get_config(self):
        return dict(negative_slope=self.negative_slope)


@register
class Tanh(_Elementwise):
    """``tanh(x)``."""

    def forward(self, x):
        self._y = np.tanh(x)
        return self._y

    def backward(self, grad_y):
        return grad_y * (1 - self._y * self._y)


@register
class ScaledTanh(_Elementwise):
    """LeNet-5's squashing function ``A * tanh(S * x)``, by default ``1.7159 * tanh(2x/3)``.

    LeCun et al. 1998, appendix A: with these constants ``f(1) = 1`` and
    ``f(-1) = -1``, and the gain is close to 1 around the origin.
    """

    def __init__(self, amplitude=1.7159, slope=2.0 / 3.0):
        self.amplitude = check_real("ScaledTanh", "amplitude", amplitude)
        self.slope = check_real("ScaledTanh", "slope", slope)

    def forward(self, x):
        self._t = np.tanh(x * x.dtype.type(self.slope))
        return self._t * x.dtype.type(self.amplitude)

    def backward(self, grad_y):
        scale = grad_y.dtype.type(self.amplitude * self.slope)
        return grad_y * scale * (1 - self._t * self._t)

    def get_config(self):
        return dict(amplitude=self.amplitude, slope=self.slope)


@register
class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))``, computed without overflow."""

    def forward(self, x):
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self._y

    def backward(self, grad_y):
        return grad_y * self._y * (1 - self._y)


@register
class Softmax(_Elementwise):
    """Softmax over ``axis`` (default the last). For training, prefer the fused
    :func:`convlayer.training.softmax_cross_entropy` on logits."""

    def __init__(self, axis=-1):
        if not _is_int(axis):
            raise TypeError(f"Softmax: axis must be an int, got {type(axis).__name__} {axis!r}")
        self.axis = int(axis)

    def forward(self, x):
        z = np.exp(x - x.max(axis=self.axis, keepdims=True))
        self._y = z / z.sum(axis=self.axis, keepdims=True)
        return self._y

    def backward(self, grad_y):
        y = self._y
        return y * (grad_y - (grad_y * y).sum(axis=self.axis, keepdims=True))

    def get_config(self):
        return dict(axis=self.axis)


@register
class BatchNorm(Layer):
    """Batch normalisation over the batch and spatial axes of ``(N, C, *S)`` (any rank, or ``(N, C)``).

    Training uses the batch statistics and updates running estimates
    (``running = (1 - momentum) * running + momentum * batch``, unbiased
    variance, as PyTorch); evaluation uses the running estimates.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype="float32"):
        self.num_features = check_int("BatchNorm", "num_features", num_features, 1)
        self.eps = check_real("BatchNorm", "eps", eps)
        if self.eps <= 0:
            raise ValueError(f"BatchNorm: eps={eps!r} must be > 0 (it keeps a constant channel's 1/sqrt(var + eps) "
                             "finite)")
        self.momentum = check_real("BatchNorm", "momentum", momentum)
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"BatchNorm: momentum={momentum!r} must be in [0, 1] (the new batch's weight in the "
                             "running estimates)")
        self.dtype = float_dtype("BatchNorm", dtype)
        self.weight = Parameter(np.ones(num_features, self.dtype))
        self.bias = Parameter(np.zeros(num_features, self.dtype))
        self.running_mean = np.zeros(num_features, self.dtype)
        self.running_var = np.ones(num_features, self.dtype)

    def output_shape(self, input_shape):
        return check_input_shape(self, input_shape, channels=self.num_features)

    def _shape(self, x):
        check_input_shape(self, x.shape, channels=self.num_features)
        return (1, self.num_features, *([1] * (x.ndim - 2)))

    def forward(self, x):
        x = check_dtype(self, "input", x)
        shape = self._shape(x)
        axes = (0, *range(2, x.ndim))
        if self.training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            count = x.size // self.num_features
            m = self.momentum
            self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(self.dtype)
            unbiased = var * (count / max(count - 1, 1))
            self.running_var = ((1 - m) * self.running_var + m * unbiased).astype(self.dtype)
        else:
            mean, var = self.running_mean, self.running_var
        self._inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        self._xhat = (x - mean.reshape(shape)) * self._inv_std.reshape(shape)
        return self._xhat * self.weight.value.reshape(shape) + self.bias.value.reshape(shape)

    def backward(self, grad_y):
        grad_y = check_dtype(self, "grad_y", grad_y)
        shape = self._shape(grad_y)
        axes = (0, *range(2, grad_y.ndim))
        self.weight.grad += (grad_y * self._xhat).sum(axis=axes)
        self.bias.grad += grad_y.sum(axis=axes)
        g = grad_y * self.weight.value.reshape(shape)
        if not self.training:
            return g * self._inv_std.reshape(shape)
        mean_g = g.mean(axis=axes, keepdims=True)
        mean_gx = (g * self._xhat).mean(axis=axes, keepdims=True)
        return (g - mean_g - self._xhat * mean_gx) * self._inv_std.reshape(shape)

    def buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def set_buffer(self, name, value):
        if name not in ("running_mean", "running_var"):
            raise KeyError(name)
        setattr(self, name, value)

    def get_config(self):
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum, dtype=self.dtype.name)

    def flops(self, input_shape):
        return 2 * math.prod(input_shape)


@register
class Dropout(_Elementwise):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale by ``1/(1-p)``."""

    def __init__(self, p=0.5, seed=None):
        self.p = check_real("Dropout", "p", p)
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"Dropout: p={p} must be in [0, 1)")
        self.seed = None if seed is None else check_int("Dropout", "seed", seed, 0)
        self._rng = np.random.default_rng(seed if seed is not None else init_rng().integers(2**63))

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        self._mask = (self._rng.random(x.shape) >= self.p).astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * self._mask

    def backward(self, grad_y):
        return grad_y if self._mask is None else grad_y * self._mask

    def get_config(self):
        return dict(p=self.p, seed=self.seed)


def layer_config(layer: Layer) -> dict:
    """``{"type": ..., "config": ...}`` of a layer, nested for containers."""
    return {"type": type(layer).__name__, "config": layer.get_config()}


def layer_from_config(spec) -> Layer:
    """Rebuild a layer from :func:`layer_config` output, resolving types ONLY from the closed registry."""
    if not isinstance(spec, dict) or set(spec) != {"type", "config"}:
        raise ValueError(f"layer spec must be a dict with keys 'type' and 'config', got {spec!r:.200}")
    name, config = spec["type"], spec["config"]
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown layer type {name!r:.100}; known types: {sorted(REGISTRY)}")
    if not isinstance(config, dict):
        raise ValueError(f"config of layer {name} must be a dict, got {type(config).__name__}")
    try:
        return REGISTRY[name].from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid config for layer {name}: {exc}") from exc


@register
class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse.

    >>> net = Sequential([Flatten(), Linear(4, 2)])
    >>> net(np.zeros((3, 2, 2), np.float32)).shape
    (3, 2)
    """

    def __init__(self, layers):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a Layer")

    def children(self):
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_y):
        for layer in reversed(self.layers):
            grad_y = layer.backward(grad_y)
        return grad_y

    def get_config(self):
        return {"layers": [layer_config(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        layers = config["layers"]
        if not isinstance(layers, list):
            raise ValueError("Sequential config 'layers' must be a list")
        return cls([layer_from_config(spec) for spec in layers])

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def flops(self, input_shape):
        total = 0
        for layer in self.layers:
            total += layer.flops(input_shape)
            input_shape = layer.output_shape(input_shape)
        return total

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {layer!r}".replace("\n", "\n  ") for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


@register
class Residual(Layer):
    """Branching block ``y = body(x) + shortcut(x)`` (shortcut: identity when ``None``).

    Gradients of the two branches add up at the input, so blocks nest into
    ResNet-style networks.
    """

    def __init__(self, body, shortcut=None):
        for name, value in (("body", body), ("shortcut", shortcut)):
            if not isinstance(value, Layer) and not (name == "shortcut" and value is None):
                raise TypeError(f"Residual: {name} must be a Layer{' or None' if name == 'shortcut' else ''}, "
                                f"got {type(value).__name__}")
        self.body = body
        self.shortcut = shortcut

    def children(self):
        kids = {"body": self.body}
        if self.shortcut is not None:
            kids["shortcut"] = self.shortcut
        return kids

    def forward(self, x):
        y = self.body.forward(x)
        s = x if self.shortcut is None else self.shortcut.forward(x)
        if y.shape != s.shape:
            raise ValueError(f"Residual: body output {y.shape} and shortcut output {s.shape} differ")
        return y + s

    def backward(self, grad_y):
        g = self.body.backward(grad_y)
        return g + (grad_y if self.shortcut is None else self.shortcut.backward(grad_y))

    def get_config(self):
        return {"body": layer_config(self.body),
                "shortcut": None if self.shortcut is None else layer_config(self.shortcut)}

    @classmethod
    def from_config(cls, config):
        shortcut = config.get("shortcut")
        return cls(layer_from_config(config["body"]), None if shortcut is None else layer_from_config(shortcut))

    def output_shape(self, input_shape):
        y = tuple(self.body.output_shape(input_shape))
        s = tuple(input_shape) if self.shortcut is None else tuple(self.shortcut.output_shape(input_shape))
        if y != s:
            raise ValueError(f"Residual: body output {y} and shortcut output {s} differ")
        return y

    def flops(self, input_shape):
        extra = 0 if self.shortcut is None else self.shortcut.flops(input_shape)
        return self.body.flops(input_shape) + extra + math.prod(self.output_shape(input_shape))

    def __repr__(self):
        return f"Residual(body={self.body!r}, shortcut={self.shortcut!r})"
