"""Library-wide settings: the memory budget and the workspace size.

Every op checks the size of its output (and of any padded copy of its
input) against the memory budget *before* allocating, so an absurd
argument gives a ``ValueError`` instead of an out-of-memory crash.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

_state = {
    # Largest single array an op may allocate (bytes).
    "memory_budget": 8 * 2**30,
    # Largest im2col-style workspace per call (bytes); larger problems are
    # processed in batch chunks so the workspace stays bounded.
    "workspace_limit": 256 * 2**20,
}


def get_memory_budget() -> int:
    """Largest array, in bytes, that one op may allocate (default 8 GiB)."""
    return _state["memory_budget"]


def set_memory_budget(nbytes: int) -> None:
    """Set the largest array, in bytes, that one op may allocate."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1:
        raise ValueError(f"set_memory_budget: nbytes must be a positive int, got {nbytes!r}")
    _state["memory_budget"] = nbytes


@contextlib.contextmanager
def memory_budget(nbytes: int):
    """Context manager that sets the memory budget and restores it afterwards."""
    old = get_memory_budget()
    set_memory_budget(nbytes)
    try:
        yield
    finally:
        _state["memory_budget"] = old


def get_workspace_limit() -> int:
    """Largest temporary workspace, in bytes, one call uses before chunking the batch."""
    return _state["workspace_limit"]


def set_workspace_limit(nbytes: int) -> None:
    """Set the workspace size above which ops process the batch in chunks."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1:
        raise ValueError(f"set_workspace_limit: nbytes must be a positive int, got {nbytes!r}")
    _state["workspace_limit"] = nbytes


def check_budget(op: str, what: str, shape, dtype) -> None:
    """Raise ``ValueError`` if an array of ``shape`` and ``dtype`` exceeds the budget."""
    nbytes = math.prod(map(int, shape)) * np.dtype(dtype).itemsize
    budget = get_memory_budget()
    if nbytes > budget:
        raise ValueError(
            f"{op}: {what} of shape {tuple(int(v) for v in shape)} would take {nbytes / 2**30:.3g} GiB, "
            f"over the memory budget of {budget / 2**30:.3g} GiB; check the arguments, or raise the "
            f"budget with convlayer.set_memory_budget()"
        )


def _numba_set(n: int) -> None:
    import sys

    if "numba" in sys.modules:  # only when the direct kernels are in use; never import numba just for this
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for BLAS and the compiled kernels (the one knob for the thread count)."""
    from threadpoolctl import threadpool_limits

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    threadpool_limits(limits=n)
    _state["threads"] = n
    _numba_set(n)


def get_num_threads() -> int | None:
    """The thread count set with :func:`set_num_threads` (``None``: the libraries' defaults)."""
    return _state.get("threads")


@contextlib.contextmanager
def num_threads(n: int):
    """Context manager: ``n`` threads inside the block, the previous setting restored after it."""
    from threadpoolctl import threadpool_limits

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_threads: n must be a positive int, got {n!r}")
    previous = _state.get("threads")
    with threadpool_limits(limits=n):
        _state["threads"] = n
        _numba_set(n)
        try:
            yield
        finally:
            _state["threads"] = previous
            import os

            _numba_set(previous or os.cpu_count() or 1)
