"""Shape arithmetic of convolution, transposed convolution and pooling.

Everything here is a pure function on Python ints: no arrays, no compute.
The functional ops call these first, so every shape error is raised before
any allocation.

Conventions (one spatial axis; every function works per axis):

* ``k`` kernel size, ``s`` stride, ``d`` dilation, ``(lo, hi)`` padding.
* The effective kernel span is ``d * (k - 1) + 1``.
* Convolution output size: ``floor((n + lo + hi - d*(k-1) - 1) / s) + 1``.
* Transposed convolution output size:
  ``(n - 1)*s - lo - hi + d*(k-1) + 1 + output_padding``.

Padding strings (see DESIGN.md section 3):

``"valid"``       no padding.
``"same"``        output ``ceil(n / s)`` for any stride and dilation; an odd
                  total puts the extra element at the end (SAME_UPPER).
``"same_lower"``  the same, extra element at the start (SAME_LOWER).
``"full"``        ``d*(k-1)`` on both sides: every input meets every tap.
``"causal"``      ``d*(k-1)`` at the start only: output ``t`` sees inputs
                  at or before ``t`` (with stride 1).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "PADDING_STRINGS",
    "normalize_tuple",
    "resolve_padding",
    "same_padding",
    "conv_output_size",
    "conv_transpose_output_size",
    "conv_transpose_output_range",
    "pool_output_size",
    "padding_for_output_size",
    "output_padding_for_size",
    "ReceptiveField",
    "receptive_field",
]

PADDING_STRINGS = ("valid", "same", "same_lower", "full", "causal")

Pair = tuple[int, int]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(op: str, name: str, value, minimum: int) -> int:
    """``value`` as an int, checked: ``TypeError`` if it is not one (bools are not), ``ValueError`` if it is
    below ``minimum``."""
    if not _is_int(value):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{op}: {name}={value} must be >= {minimum}")
    return int(value)


def check_bool(op: str, name: str, value) -> bool:
    """``value`` as a bool, checked: ``TypeError`` unless it is one (Python's or NumPy's); a string such as
    ``"no"`` would otherwise count as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_real(op: str, name: str, value, finite: bool = True) -> float:
    """``value`` as a float, checked: ``TypeError`` if it is not a real number (bools are not), ``ValueError``
    if ``finite`` and it is infinite or NaN."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} {value!r}")
    if finite and not math.isfinite(value):
        raise ValueError(f"{op}: {name}={value!r} must be finite")
    return float(value)


def _check_sizes(op: str, n, k, s, d) -> None:
    """The pure size functions' inputs: ``n`` (an input size) an int >= 0, kernel, stride and dilation ints
    >= 1."""
    for name, value, least in (("n", n, 0), ("k", k, 1), ("s", s, 1), ("d", d, 1)):
        check_int(op, name, value, least)


def _fmt(value) -> str:
    return repr(tuple(value) if isinstance(value, list) else value)


def normalize_tuple(value, n: int, name: str, *, minimum: int | None = None, op: str = "") -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``n`` Python ints.

    ``value`` is an int (repeated ``n`` times) or a sequence of exactly ``n``
    ints. ``bool`` is refused: ``stride=True`` is a bug, not a 1.

    Raises
    ------
    TypeError
        If ``value`` or one of its elements is not an int.
    ValueError
        If the sequence has the wrong length or an element is below
        ``minimum``. The message names the argument.

    Examples
    --------
    >>> normalize_tuple(2, 3, "stride")
    (2, 2, 2)
    >>> normalize_tuple((1, 2), 2, "dilation", minimum=1)
    (1, 2)
    """
    prefix = f"{op}: " if op else ""
    if _is_int(value):
        items = (int(value),) * n
    elif isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(
                f"{prefix}{name}={_fmt(value)} must be an int or a sequence of {n} ints "
                f"(one per spatial axis), got {len(value)} values"
            )
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{prefix}{name}={_fmt(value)} must contain only ints")
        items = tuple(int(v) for v in value)
    else:
        raise TypeError(
            f"{prefix}{name} must be an int or a sequence of {n} ints, got {type(value).__name__} {value!r}"
        )
    if minimum is not None and any(v < minimum for v in items):
        raise ValueError(f"{prefix}{name}={_fmt(value)} must be >= {minimum} on every axis")
    return items


def same_padding(n: int, k: int, s: int = 1, d: int = 1, *, lower: bool = False) -> Pair:
    """Padding ``(lo, hi)`` that makes the output size ``ceil(n / s)``.

    Works for any stride and dilation. An odd total goes to the end
    (``lower=False``, TF/ONNX SAME_UPPER) or to the start (``lower=True``).

    >>> same_padding(5, 3, 2)
    (1, 1)
    >>> same_padding(4, 3, 2)
    (0, 1)
    >>> same_padding(4, 3, 2, lower=True)
    (1, 0)
    """
    _check_sizes("same_padding", n, k, s, d)
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _resolve_axis(spec, n: int, k: int, s: int, d: int, name: str, axis: int, op: str) -> Pair:
    prefix = f"{op}: " if op else ""
    if isinstance(spec, str):
        if spec == "valid":
            return (0, 0)
        if spec == "same":
            return same_padding(n, k, s, d)
        if spec == "same_lower":
            return same_padding(n, k, s, d, lower=True)
        if spec == "full":
            return (d * (k - 1), d * (k - 1))
        if spec == "causal":
            return (d * (k - 1), 0)
        raise ValueError(f"{prefix}{name}={spec!r} on axis {axis} is not one of {PADDING_STRINGS} or an int")
    if _is_int(spec):
        pair = (int(spec), int(spec))
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and all(_is_int(v) for v in spec):
        pair = (int(spec[0]), int(spec[1]))
    else:
        raise TypeError(
            f"{prefix}{name}: axis {axis} must be an int, a (lo, hi) pair of ints or one of "
            f"{PADDING_STRINGS}, got {spec!r}"
        )
    if pair[0] < 0 or pair[1] < 0:
        raise ValueError(f"{prefix}{name}: padding must be >= 0, got {pair} on axis {axis}")
    return pair


def resolve_padding(
    padding,
    in_sizes: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    *,
    name: str = "padding",
    op: str = "",
) -> tuple[Pair, ...]:
    """Resolve any padding spec to one ``(lo, hi)`` pair per spatial axis.

    Parameters
    ----------
    padding : int, str, or sequence
        An int (both sides of every axis); a string from
        :data:`PADDING_STRINGS` (every axis); or a sequence with one entry
        per axis, each an int, a ``(lo, hi)`` pair or a string, so
        ``("causal", 1)`` is causal in time and symmetric in frequency.
    in_sizes, kernel_size, stride, dilation : sequences of int
        The input's spatial sizes and the op's geometry, one per axis.

    Returns
    -------
    tuple of (lo, hi) pairs, one per axis.

    Examples
    --------
    >>> resolve_padding("same", (7, 8), (3, 3), (2, 2), (1, 1))
    ((1, 1), (0, 1))
    >>> resolve_padding(((1, 0), "causal"), (5, 5), (3, 3))
    ((1, 0), (2, 0))
    """
    n = len(in_sizes)
    stride = tuple(stride) if stride is not None else (1,) * n
    dilation = tuple(dilation) if dilation is not None else (1,) * n
    prefix = f"{op}: " if op else ""
    if isinstance(padding, str) or _is_int(padding):
        specs = [padding] * n
    elif isinstance(padding, (tuple, list)):
        if len(padding) != n:
            raise ValueError(
                f"{prefix}{name}={_fmt(padding)} must have one entry per spatial axis ({n}), got {len(padding)}"
            )
        specs = list(padding)
    else:
        raise TypeError(
            f"{prefix}{name} must be an int, a string {PADDING_STRINGS} or a sequence with one entry per axis, "
            f"got {type(padding).__name__} {padding!r}"
        )
    return tuple(
        _resolve_axis(spec, in_sizes[i], kernel_size[i], stride[i], dilation[i], name, i, op)
        for i, spec in enumerate(specs)
    )


def conv_output_size(
    in_sizes: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[Pair],
    dilation: Sequence[int],
    *,
    op: str = "conv",
) -> tuple[int, ...]:
    """Output spatial sizes of a convolution: ``floor((n + lo + hi - d*(k-1) - 1)/s) + 1``.

    Raises ``ValueError`` when the dilated kernel is larger than the padded
    input on some axis (the message gives both sizes).

    >>> conv_output_size((32, 32), (5, 5), (1, 1), ((0, 0), (0, 0)), (1, 1))
    (28, 28)
    """
    out = []
    for i, (n, k, s, (lo, hi), d) in enumerate(zip(in_sizes, kernel_size, stride, padding, dilation)):
        span = d * (k - 1) + 1
        padded = n + lo + hi
        if span > padded:
            raise ValueError(
                f"{op}: kernel (size {k}, dilation {d}, span {span}) is larger than the padded input "
                f"(size {n} + padding {lo}+{hi} = {padded}) on spatial axis {i}; "
                f"use more padding or a smaller kernel"
            )
        out.append((padded - span) // s + 1)
    return tuple(out)


def conv_transpose_output_range(
    in_sizes: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[Pair],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Smallest and largest valid output size of a transposed convolution, per axis.

    The smallest is ``(n-1)*s - lo - hi + d*(k-1) + 1``; ``output_padding``
    adds up to ``max(s, d) - 1`` to it (as in PyTorch).
    """
    ranges = []
    for n, k, s, (lo, hi), d in zip(in_sizes, kernel_size, stride, padding, dilation):
        smallest = (n - 1) * s - lo - hi + d * (k - 1) + 1
        ranges.append((smallest, smallest + max(s, d) - 1))
    return tuple(ranges)


def conv_transpose_output_size(
    in_sizes: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[Pair],
    dilation: Sequence[int],
    output_padding: Sequence[int],
    *,
    op: str = "conv_transpose",
) -> tuple[int, ...]:
    """Output sizes of a transposed convolution.

    ``(n-1)*s - lo - hi + d*(k-1) + 1 + output_padding``, with
    ``0 <= output_padding < max(s, d)``; a non-positive size is an error.

    >>> conv_transpose_output_size((4,), (4,), (2,), ((1, 1),), (1,), (0,))
    (8,)
    """
    out = []
    for i, (n, k, s, (lo, hi), d, op_) in enumerate(
        zip(in_sizes, kernel_size, stride, padding, dilation, output_padding)
    ):
        if not 0 <= op_ < max(s, d):
            raise ValueError(
                f"{op}: output_padding={op_} on spatial axis {i} must be >= 0 and smaller than "
                f"stride ({s}) or dilation ({d})"
            )
        size = (n - 1) * s - lo - hi + d * (k - 1) + 1 + op_
        if size < 1:
            raise ValueError(
                f"{op}: output size {size} on spatial axis {i} is not positive "
                f"(input {n}, kernel {k}, stride {s}, dilation {d}, padding ({lo}, {hi}), "
                f"output_padding {op_}); use less padding"
            )
        out.append(size)
    return tuple(out)


def pool_output_size(
    in_sizes: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[Pair],
    dilation: Sequence[int],
    ceil_mode: bool = False,
    *,
    op: str = "pool",
) -> tuple[int, ...]:
    """Output sizes of a pooling window.

    As convolution, with ``ceil`` instead of ``floor`` when ``ceil_mode``; a
    last window that would start past the input and its low padding is
    dropped (PyTorch's and ONNX's rule).

    >>> pool_output_size((5,), (2,), (2,), ((0, 0),), (1,), ceil_mode=True)
    (3,)
    """
    base = conv_output_size(in_sizes, kernel_size, stride, padding, dilation, op=op)
    if not ceil_mode:
        return base
    out = []
    for n, k, s, (lo, hi), d in zip(in_sizes, kernel_size, stride, padding, dilation):
        span = d * (k - 1) + 1
        size = -(-(n + lo + hi - span) // s) + 1
        if (size - 1) * s >= n + lo:
            size -= 1
        out.append(size)
    return tuple(out)


def padding_for_output_size(
    n: int, out: int, k: int, s: int = 1, d: int = 1, *, lower: bool = False
) -> Pair:
    """The smallest padding ``(lo, hi)`` that makes a convolution produce ``out``.

    The total is split as ``"same"`` splits it (extra at the end unless
    ``lower``). Raises ``ValueError`` when no padding gives ``out`` (the
    input is already too long: padding cannot shrink it).

    >>> padding_for_output_size(28, 28, 5)
    (2, 2)
    """
    _check_sizes("padding_for_output_size", n, k, s, d)
    span = d * (k - 1) + 1
    unpadded = (n - span) // s + 1 if n >= span else 0
    if out < 1 or unpadded > out:
        smallest = max(unpadded, 1)
        raise ValueError(
            f"padding_for_output_size: output size {out} is impossible for input {n}, kernel {k}, "
            f"stride {s}, dilation {d}; the smallest reachable output is {smallest}"
        )
    total = max((out - 1) * s + span - n, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def output_padding_for_size(n: int, out: int, k: int, s: int, padding: Pair, d: int = 1) -> int:
    """The ``output_padding`` that makes a transposed convolution produce ``out``.

    Raises ``ValueError`` naming the valid range when ``out`` is unreachable.

    >>> output_padding_for_size(4, 9, 4, 2, (1, 1))
    1
    """
    _check_sizes("output_padding_for_size", n, k, s, d)
    ((smallest, largest),) = conv_transpose_output_range((n,), (k,), (s,), (padding,), (d,))
    if not smallest <= out <= largest:
        raise ValueError(
            f"conv_transpose: output_size {out} is impossible; valid sizes for input {n}, kernel {k}, "
            f"stride {s}, padding {tuple(padding)}, dilation {d} are {smallest}..{largest}"
        )
    return out - smallest


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one output element on one axis.

    ``size`` input elements are seen; consecutive outputs are ``stride``
    inputs apart; the first output's field starts at input index
    ``offset`` (negative when it begins in the padding).
    """

    size: int
    stride: int
    offset: int

    def span(self, i: int) -> tuple[int, int]:
        """Input indices ``[start, stop)`` seen by output ``i``."""
        start = self.offset + i * self.stride
        return start, start + self.size


def receptive_field(layers: Sequence[dict]) -> ReceptiveField:
    """Receptive field, effective stride and offset of a stack of layers on one axis.

    ``layers`` lists, from input to output, dicts with ``kernel_size`` and
    optionally ``stride``, ``dilation`` and ``padding`` (the low-side pad,
    an int). Layers with no spatial extent (activations) are ``{"kernel_size": 1}``.

    >>> receptive_field([{"kernel_size": 3}, {"kernel_size": 3}])
    ReceptiveField(size=5, stride=1, offset=0)
    >>> receptive_field([{"kernel_size": 5}, {"kernel_size": 2, "stride": 2}, {"kernel_size": 5}])
    ReceptiveField(size=14, stride=2, offset=0)
    """
    size, jump, offset = 1, 1, 0
    for i, layer in enumerate(layers):
        k = layer["kernel_size"]
        s = layer.get("stride", 1)
        d = layer.get("dilation", 1)
        lo = layer.get("padding", 0)
        if not all(_is_int(v) for v in (k, s, d, lo)) or k < 1 or s < 1 or d < 1 or lo < 0:
            raise ValueError(f"receptive_field: layer {i} has invalid geometry {layer!r}")
        size += d * (k - 1) * jump
        offset -= lo * jump
        jump *= s
    return ReceptiveField(size=size, stride=jump, offset=offset)

