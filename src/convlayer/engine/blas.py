"""Matrix products that leave no busy threads behind.

A multi-threaded OpenBLAS call keeps its worker threads spinning for about
0.1 s after it returns, waiting for the next call. The compiled kernels
that run right after it (patch gathers, Winograd transforms, direct
loops) then share the cores with those spinning threads and run at half
speed: the Winograd output transform took 8.0 ms after a two-thread GEMM
and 3.9 ms after the same GEMM split across two Python threads with
single-threaded BLAS (ResNet 3x3 layer, 2 cores; ``tests`` do not time
this, ``python -m benchmarks`` shows it).

:func:`matmul` therefore splits a large product into independent blocks
(along the batch, the rows or the columns; along the inner dimension, with
the partial sums added after, when it is much the longest, as in weight
gradients) and runs them on a small pool of Python threads with BLAS set to one thread
meanwhile. NumPy releases the GIL inside ``matmul``, so the blocks run in
parallel. Small products (under :data:`SPLIT_MIN_FLOPS`) run in the calling
thread, also with BLAS on one thread: BLAS's own workers are never used, so
none is left spinning (a training step alternates small products and
compiled kernels many times per batch).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Multiply-adds below which a product is not worth splitting (thread hand-off costs ~50 us).
SPLIT_MIN_FLOPS = 4_000_000
# Inner dimension, relative to the larger outer one, from which a product is split along the inner
# dimension (partial sums added after) rather than along its rows or columns: a weight gradient such as
# (64 x 51508) @ (51508 x 147) ran at 37 GFLOP/s split by columns and 55 split along the inner dimension.
INNER_SPLIT_RATIO = 8

_lock = threading.Lock()
_state: dict = {}


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def _pool(n: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _state.get("pool")
        if pool is None or _state.get("size") != n:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = _state["pool"] = ThreadPoolExecutor(n, thread_name_prefix="convlayer-blas")
            _state["size"] = n
        return pool


def _blas_controllers():
    ctl = _state.get("blas")
    if ctl is None:
        from threadpoolctl import ThreadpoolController

        ctl = _state["blas"] = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    return ctl


class _single_threaded_blas:
    """Context manager: BLAS on one thread inside, its previous thread count restored after."""

    def __enter__(self):
        self._saved = [(c, c.get_num_threads()) for c in _blas_controllers()]
        for c, _ in self._saved:
            c.set_num_threads(1)

    def __exit__(self, *exc):
        for c, n in self._saved:
            c.set_num_threads(n)


def _inner_split(a, b, out, threads):
    """``out = a @ b`` as the sum of ``threads`` products over blocks of the inner dimension."""
    blocks = _blocks(a.shape[-1], threads)
    parts = [out] + [np.empty_like(out) for _ in blocks[1:]]
    pool = _pool(threads)
    with _single_threaded_blas():
        for f in [pool.submit(np.matmul, a[..., s], b[..., s, :], out=o) for s, o in zip(blocks, parts)]:
            f.result()
    for extra in parts[1:]:
        out += extra
    return out


def _blocks(size: int, parts: int):
    step = -(-size // parts)
    return [slice(i, min(size, i + step)) for i in range(0, size, step)]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, split across threads for large products (see the module doc).

    ``a`` may have fewer leading (batch) dims than ``b``; it is then
    broadcast. ``out`` must not overlap ``a`` or ``b``.
    """
    threads = _threads()
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = int(np.prod(out.shape[:-2], dtype=np.int64))
    if threads < 2 or batch * m * n * k < SPLIT_MIN_FLOPS:
        with _single_threaded_blas():  # small: in this thread, waking (and leaving spinning) no BLAS workers
            return np.matmul(a, b, out=out)
    lead = out.shape[0] if out.ndim > 2 else 1
    if out.ndim > 2 and lead >= threads and b.ndim == out.ndim:  # split the outermost batch dim
        split_a = a.ndim == out.ndim
        jobs = [(a[s] if split_a else a, b[s], out[s]) for s in _blocks(lead, threads)]
    elif k >= INNER_SPLIT_RATIO * max(m, n):  # a long inner dimension (weight gradients): partial sums
        return _inner_split(a, b, out, threads)
    elif n >= m:  # split the columns
        jobs = [(a, b[..., s], out[..., s]) for s in _blocks(n, threads)]
    else:  # split the rows
        jobs = [(a[..., s, :], b, out[..., s, :]) for s in _blocks(m, threads)]
    pool = _pool(threads)
    with _single_threaded_blas():
        for f in [pool.submit(np.matmul, x, y, out=o) for x, y, o in jobs]:
            f.result()
    return out
