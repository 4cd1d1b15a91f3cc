"""Layer base class, parameters, initialisation and the closed registry of layer types.

A layer is an object with ``forward(x)`` (which remembers what its
backward needs) and ``backward(grad_y)`` (which returns the gradient with
respect to its input and *accumulates* the gradients of its parameters).
Its configuration is a JSON-able dict: ``type(layer).from_config(
layer.get_config())`` rebuilds it, which is how model files store the
architecture.

Initialisation
--------------
Weights are drawn from the library's initialisation generator
(:func:`seed` resets it, so a seeded run is reproducible):

* ``"kaiming_uniform"`` (default for convolution and linear layers):
  ``U(-b, b)`` with ``b = sqrt(6 / fan_in)``, He et al. 2015. It keeps the
  variance of activations constant through ReLU layers, which halve it.
* ``"glorot_uniform"``: ``b = sqrt(6 / (fan_in + fan_out))``, Glorot &
  Bengio 2010, for tanh/sigmoid layers that are linear around 0.
* ``"lecun_uniform"``: ``b = 2.4 / fan_in``, the rule of LeCun et al. 1998
  used by the faithful LeNet-5, matched to its scaled tanh.

``fan_in`` is ``in_channels / groups * prod(kernel_size)``; biases start at 0.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import numpy as np

from .. import _config

__all__ = ["Parameter", "Layer", "register", "REGISTRY", "seed", "init_weight", "INITS"]

REGISTRY: dict[str, type] = {}

_rng = {"init": np.random.default_rng(0)}

INITS = ("kaiming_uniform", "glorot_uniform", "lecun_uniform")


def seed(value: int) -> None:
    """Reset the generator used to initialise weights (and to seed dropout layers)."""
    _rng["init"] = np.random.default_rng(value)


def init_rng() -> np.random.Generator:
    return _rng["init"]


def init_weight(shape, fan_in: int, fan_out: int, init: str, dtype) -> np.ndarray:
    """Draw an initial weight of ``shape`` with the named rule (see module doc)."""
    _config.check_budget("layer", "weight", shape, dtype)
    if init == "kaiming_uniform":
        bound = math.sqrt(6.0 / max(fan_in, 1))
    elif init == "glorot_uniform":
        bound = math.sqrt(6.0 / max(fan_in + fan_out, 1))
    elif init == "lecun_uniform":
        bound = 2.4 / max(fan_in, 1)
    else:
        raise ValueError(f"init={init!r} must be one of {INITS}")
    return init_rng().uniform(-bound, bound, size=shape).astype(dtype)


def tuples_from_config(config: dict, keys) -> dict:
    """A copy of ``config`` with the JSON lists under ``keys`` turned back into tuples."""
    config = dict(config)
    for key in keys:
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    return config


def check_input_shape(layer, input_shape, rank: int | None = None, channels: int | None = None) -> tuple:
    """``input_shape`` as a tuple, checked to be ``(N, channels, *S)`` with ``rank`` spatial sizes (either
    left open where ``None``): :meth:`Layer.output_shape` of a layer whose ``forward`` would reject such an
    input raises the same kind of error instead of answering with a shape."""
    shape = tuple(input_shape)
    ndim = None if rank is None else rank + 2
    c = "C" if channels is None else channels
    want = f"(N, {c}, *spatial)" if rank is None else f"(N, {c}" + "".join(f", S{i + 1}" for i in range(rank)) + ")"
    if ((ndim is not None and len(shape) != ndim) or len(shape) < 2
            or (channels is not None and shape[1] != channels)):
        raise ValueError(f"{type(layer).__name__}: input shape must be {want}, got {shape}")
    return shape


def float_dtype(name: str, dtype) -> np.dtype:
    """A layer's ``dtype`` argument as a NumPy dtype, float32 or float64, else ``TypeError``."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{name}: dtype must be float32 or float64, got {dt}")
    return dt


def check_dtype(layer, name: str, array) -> np.ndarray:
    """``array`` (the input of ``forward`` or the gradient of ``backward``), checked to have the dtype of the
    layer's parameters (its ``weight``'s, whatever they were cast to), as the convolutions check theirs: mixing
    float32 and float64 would upcast silently, or round the gradients down into the parameters."""
    array = np.asarray(array)
    dtype = layer.weight.value.dtype
    if array.dtype != dtype:
        raise TypeError(f"{type(layer).__name__}: {name} has dtype {array.dtype}, the layer's parameters "
                        f"{dtype}; cast one to the other, e.g. {name}.astype(np.{dtype})")
    return array


def register(cls):
    """Class decorator: add a layer type to the closed registry used by model files."""
    REGISTRY[cls.__name__] = cls
    return cls


class Parameter:
    """A trainable array and the gradient accumulated for it."""

    __slots__ = ("value", "grad")

    def __init__(self, value: np.ndarray):
        self.value = value
        self.grad = np.zeros_like(value)

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def __repr__(self) -> str:
        return f"Parameter(shape={self.value.shape}, dtype={self.value.dtype})"


class Layer:
    """Base class: parameters, buffers, train/eval mode, config round trip, repr.

    ``backward`` uses what ``forward`` saved; called before any ``forward``
    it raises ``RuntimeError`` naming the layer, and with a gradient of
    another shape than the last ``forward``'s output ``ValueError`` (NumPy
    would broadcast a gradient of one image over the batch, a silent wrong
    answer). Each subclass's own ``forward`` and ``backward`` are wrapped
    for that once, when the subclass is defined (:meth:`__init_subclass__`).
    """

    training: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward, backward = cls.__dict__.get("forward"), cls.__dict__.get("backward")
        if forward is not None:
            @functools.wraps(forward)
            def checked_forward(self, x, _forward=forward):
                y = _forward(self, x)
                self._forwarded = np.shape(y)  # only once forward has saved what backward needs
                return y

            cls.forward = checked_forward
        if backward is not None:
            @functools.wraps(backward)
            def checked_backward(self, grad_y, _backward=backward):
                shape = self.__dict__.get("_forwarded")
                if shape is None:
                    raise RuntimeError(f"{type(self).__name__}: backward() called before forward(); backward uses "
                                       "what forward saves")
                if np.shape(grad_y) != shape:
                    raise ValueError(f"{type(self).__name__}: grad_y has shape {np.shape(grad_y)}, but the last "
                                     f"forward's output has shape {shape}")
                return _backward(self, grad_y)

            cls.backward = checked_backward

    # --- to implement -------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of the output for an input of ``input_shape`` (batch axis included)."""
        return tuple(input_shape)

    def flops(self, input_shape: tuple) -> int:
        """Multiply-adds counted as 2 FLOPs, for one forward pass on ``input_shape``."""
        return 0

    def spatial_geometry(self) -> dict | None:
        """``kernel_size``/``stride``/``dilation``/``padding`` per axis for receptive fields, if spatial."""
        return None

    # --- shared machinery ---------------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        return cls(**config)

    def _own_parameters(self) -> dict[str, Parameter]:
        return {k: v for k, v in vars(self).items() if isinstance(v, Parameter)}

    def children(self) -> dict[str, "Layer"]:
        return {}

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._own_parameters().items():
            yield prefix + name, p
        for cname, child in self.children().items():
            yield from child.named_parameters(f"{prefix}{cname}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state saved with the model (BatchNorm running statistics)."""
        return {}

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, b in self.buffers().items():
            yield prefix + name, b
        for cname, child in self.children().items():
            yield from child.named_buffers(f"{prefix}{cname}.")

    def set_buffer(self, name: str, value: np.ndarray) -> None:
        raise KeyError(name)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: p.value for name, p in self.named_parameters()}
        state.update(dict(self.named_buffers()))
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into parameters and buffers; names and shapes must match exactly."""
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = set(params) | set(buffers)
        if set(state) != expected:
            missing = sorted(expected - set(state))
            extra = sorted(set(state) - expected)
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")
        converted = {}
        for name, value in state.items():  # every entry checked before any is copied: a bad one changes nothing
            target = params[name].value if name in params else buffers[name]
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
                raise TypeError(f"state entry {name!r} must be a numeric NumPy array, got {type(value).__name__}"
                                + (f" of dtype {value.dtype}" if isinstance(value, np.ndarray) else ""))
            if value.shape != target.shape:
                raise ValueError(f"state entry {name!r} has shape {value.shape}, the model expects {target.shape}")
            converted[name] = np.array(value, dtype=target.dtype)
        for name, value in converted.items():
            if name in params:
                params[name].value = value
            else:
                self._set_nested_buffer(name, value)

    def _set_nested_buffer(self, name: str, value: np.ndarray) -> None:
        head, _, rest = name.partition(".")
        if rest and head in self.children():
            self.children()[head]._set_nested_buffer(rest, value)
        else:
            self.set_buffer(name, value)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Layer":
        self.training = mode
        for child in self.children().values():
            child.train(mode)
        return self

    def eval(self) -> "Layer":
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.value.size for p in self.parameters())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
