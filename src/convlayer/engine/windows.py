"""Sliding windows without per-pixel work: phases, taps and the output lattice.

Every windowed op (convolution, its gradients, pooling) reads, for each
kernel tap ``m`` and output position ``o``, the padded input at
``o*s + m*d``. This module turns that into a few large contiguous slices:

1. **Phase split.** The padded input ``(B, *P)`` is rounded up to a
   multiple of the stride and regrouped as ``(B, R, Q)`` where
   ``R = prod(s)`` phases and ``Q = prod(ceil(P/s))`` flattened positions:
   ``xph[b, r, u] = xpad[b, u*s + r]``. With stride 1 this is a free
   reshape.
2. **Taps.** Tap ``m`` has ``m*d = q*s + r``: it reads phase ``r`` at
   flattened offset ``off = flat(q)``. All outputs of that tap are then the
   *contiguous* slice ``xph[:, r, off : off + L]``.
3. **Lattice.** Output ``o`` lives at flattened position ``flat(o)`` of
   that slice; the ``L`` positions include a few columns that wrap around
   rows ("garbage") and are dropped by a strided view.

The engine works on these slices with BLAS or elementwise NumPy, so the
Python-level loop runs over kernel taps only, never over pixels or batch
elements. No argument checking happens here: callers validate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided


@dataclass(frozen=True)
class WindowPlan:
    """Geometry of one windowed op on a padded input of spatial shape ``full``.

    ``padded`` is the part of it that some window reaches (the tail that no
    window reaches is never read), and ``stride`` is 1 on axes with a single
    output, where the stride does not matter.
    """

    full: tuple[int, ...]
    padded: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    out: tuple[int, ...]
    q_shape: tuple[int, ...]
    q_strides: tuple[int, ...]  # element strides of the flattened Q grid
    phases: int
    taps: tuple[tuple[int, int], ...]  # (phase index, flat offset) per kernel tap, C order
    length: int  # L, positions per tap slice

    def __hash__(self) -> int:
        # Plans key the engine's caches (``lru_cache``), which hash them several times per call: the hash of
        # the fields (25 taps for a 5x5 kernel) is computed once and kept; the fields never change.
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached

    @property
    def n_taps(self) -> int:
        return len(self.taps)

    @property
    def q_size(self) -> int:
        return math.prod(self.q_shape)

    @property
    def unit_stride(self) -> bool:
        return all(s == 1 for s in self.stride)


@lru_cache(maxsize=512)
def make_plan(full, kernel, stride, dilation, out) -> WindowPlan:
    """Build (and cache) the plan for one geometry; all arguments are int tuples."""
    stride = tuple(1 if o == 1 else s for o, s in zip(out, stride))
    padded = tuple((o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out, stride, dilation, kernel))
    q_shape = tuple(-(-p // s) for p, s in zip(padded, stride))
    q_strides = tuple(math.prod(q_shape[i + 1:]) for i in range(len(q_shape)))
    phase_strides = tuple(math.prod(stride[i + 1:]) for i in range(len(stride)))
    taps = []
    for m in np.ndindex(*kernel):
        phase, offset = 0, 0
        for i, mi in enumerate(m):
            q, r = divmod(mi * dilation[i], stride[i])
            phase += r * phase_strides[i]
            offset += q * q_strides[i]
        taps.append((phase, offset))
    length = sum((o - 1) * qs for o, qs in zip(out, q_strides)) + 1
    return WindowPlan(
        full=full,
        padded=padded,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        out=out,
        q_shape=q_shape,
        q_strides=q_strides,
        phases=math.prod(stride),
        taps=tuple(taps),
        length=length,
    )


def _phase_slices(plan: WindowPlan):
    """``(phase index, index tuple into the padded input)`` of each stride phase."""
    for idx, r in enumerate(np.ndindex(*plan.stride)):
        yield idx, (slice(None), *(slice(ri, p, si) for ri, p, si in zip(r, plan.padded, plan.stride)))


def split_phases(xp: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """``(B, *P)`` padded input to ``(B, R, Q)`` phases (see module doc), in one pass."""
    b = xp.shape[0]
    if plan.padded != plan.full:
        xp = xp[(slice(None), *(slice(0, p) for p in plan.padded))]
    if plan.unit_stride:
        return np.ascontiguousarray(xp).reshape(b, 1, plan.q_size)
    out = np.empty((b, plan.phases, *plan.q_shape), dtype=xp.dtype)
    for idx, index in _phase_slices(plan):
        part = xp[index]  # (B, *sizes), sizes <= Q
        dst = out[:, idx]
        dst[(slice(None), *(slice(0, n) for n in part.shape[1:]))] = part
        for axis, (n, q) in enumerate(zip(part.shape[1:], plan.q_shape)):
            if n < q:  # the round-up tail of this phase: never read by a real output
                tail = [slice(None)] * dst.ndim
                tail[1 + axis] = slice(n, q)
                dst[tuple(tail)] = 0
    return out.reshape(b, plan.phases, plan.q_size)


def merge_phases(gph: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """Adjoint (and inverse) of :func:`split_phases`: ``(B, R, Q)`` to ``(B, *full)``."""
    b = gph.shape[0]
    if plan.unit_stride:
        used = gph.reshape(b, *plan.padded)
        if plan.padded == plan.full:
            return used
    else:
        used = None
    out = np.zeros((b, *plan.full), dtype=gph.dtype) if plan.padded != plan.full else None
    if used is not None:
        out[(slice(None), *(slice(0, p) for p in plan.padded))] = used
        return out
    if out is None:
        out = np.empty((b, *plan.full), dtype=gph.dtype)
    g = gph.reshape(b, plan.phases, *plan.q_shape)
    for idx, index in _phase_slices(plan):
        target = out[index]
        target[...] = g[(slice(None), idx, *(slice(0, n) for n in target.shape[1:]))]
    return out


def lattice_view(acc: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """View ``(..., L)`` tap-slice results as ``(..., *out)`` (drops the garbage)."""
    return as_strided(
        acc,
        shape=(*acc.shape[:-1], *plan.out),
        strides=(*acc.strides[:-1], *(qs * acc.strides[-1] for qs in plan.q_strides)),
        writeable=False,
    )


def lattice_embed(y: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """Adjoint of :func:`lattice_view`: ``(..., *out)`` into zeros ``(..., L)``."""
    lead = y.shape[: y.ndim - len(plan.out)]
    flat = np.zeros((*lead, plan.length), dtype=y.dtype)
    view = as_strided(
        flat,
        shape=(*lead, *plan.out),
        strides=(*flat.strides[:-1], *(qs * flat.strides[-1] for qs in plan.q_strides)),
    )
    view[...] = y
    return flat


def lattice_mask(plan: WindowPlan) -> np.ndarray:
    """Boolean ``(L,)``: True at positions that are real outputs."""
    return lattice_embed(np.ones(plan.out, dtype=bool), plan)
