"""The implicit GEMM's register tile alone, its operands in cache: the ceiling of :mod:`convlayer.engine.implicit`.

    python -m benchmarks.microkernel [--steps 256] [--calls 20000] [--repeats 3] [--tile 6x2 --tile 4x3:8 ...]

Each thread runs each of the engine's tiles (``FORWARD_MR`` rows by
``FORWARD_NV`` vectors for the forward, ``MR`` by ``NV`` for the
gradients), or the tiles given as ``ROWSxVECTORS[:PREFETCH]``,
``--calls`` times over ``--steps`` steps on its own small operands,
accumulating into its own result; prints GFLOP/s over all threads, to
compare with the machine GEMM throughput that ``python -m benchmarks``
measures first.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import get_num_threads, njit, prange

from convlayer.cli import positive_int
from convlayer.engine import implicit

def _runner(mk, mr):
    @njit(parallel=True, nogil=True)
    def run(a, arows, b, brows, c, crows, steps, calls):  # pragma: no cover - compiled
        for t in prange(b.shape[0]):
            for _ in range(calls):
                mk(a, 0, arows, mr, b[t], 0, brows, 0, c[t], 0, crows, steps, True)

    return run


def _tile(text: str):
    """``(rows, vectors, prefetch)`` from ``"6x2"`` or ``"4x3:8"``."""
    try:
        shape, _, ahead = text.partition(":")
        rows, vectors = (int(v) for v in shape.split("x"))
        prefetch = int(ahead or 0)
    except ValueError:
        raise SystemExit(f"--tile: expected ROWSxVECTORS[:PREFETCH] such as 6x2 or 4x3:8, got {text!r}") from None
    if rows < 1 or vectors < 1 or prefetch < 0:
        raise SystemExit(f"--tile: rows and vectors must be positive and prefetch non-negative, got {text!r}")
    return rows, vectors, prefetch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=positive_int, default=256, help="steps (inner dimension) per call")
    ap.add_argument("--calls", type=positive_int, default=20000, help="calls per thread")
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--tile", action="append", default=[], metavar="ROWSxVECTORS[:PREFETCH]",
                    help="time this tile instead of the engine's (repeatable), e.g. 6x2 or 4x3:8")
    args = ap.parse_args(argv)
    threads = get_num_threads()
    rng = np.random.default_rng(0)
    tiles = [("forward", implicit.FORWARD_MR, implicit.FORWARD_NV, implicit.FORWARD_PREFETCH),
             ("gradients", implicit.MR, implicit.NV, 0)]
    if args.tile:
        tiles = [("given", *_tile(t)) for t in args.tile]
    for pass_, mr, nv, prefetch in tiles:
        mk = implicit.make_microkernel(mr, nv, implicit.VECTOR_BYTES, prefetch)
        width = nv * implicit.lanes(np.float32)
        a = rng.random(args.steps * mr, dtype=np.float32)  # packed: step by step, MR values each
        b = rng.random((threads, args.steps * width), dtype=np.float32)  # one contiguous run of width per step
        c = np.zeros((threads, mr * width), dtype=np.float32)
        arows = np.arange(mr, dtype=np.int64)
        brows = np.arange(args.steps, dtype=np.int64) * width
        crows = np.arange(mr, dtype=np.int64) * width
        run = _runner(mk, mr)
        run(a, arows, b, brows, c, crows, args.steps, 1)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(a, arows, b, brows, c, crows, args.steps, args.calls)
            best = min(best, time.perf_counter() - start)
        flops = 2.0 * threads * args.calls * args.steps * mr * width
        print(f"{pass_} tile {mr}x{width} float32 ({implicit.VECTOR_BYTES * 8}-bit vectors, prefetch {prefetch}), "
              f"{threads} threads, "
              f"{args.steps} steps: {flops / best / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
