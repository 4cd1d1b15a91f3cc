"""The implicit GEMM's register tile alone, its operands in cache: the ceiling of :mod:`convlayer.engine.implicit`.

    python -m benchmarks.microkernel [--steps 256] [--calls 20000] [--repeats 3]

Each thread runs each of the engine's two tiles (``MR`` rows by
``FORWARD_NV`` vectors for the forward, by ``NV`` vectors for the
gradients) ``--calls`` times over ``--steps`` steps on its own small
operands, accumulating into its own result; prints GFLOP/s over all
threads, to compare with the machine GEMM throughput that
``python -m benchmarks`` measures first.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import get_num_threads, njit, prange

from convlayer.engine import implicit

def _runner(mk):
    @njit(parallel=True, nogil=True)
    def run(a, arows, b, brows, c, crows, steps, calls):  # pragma: no cover - compiled
        for t in prange(b.shape[0]):
            for _ in range(calls):
                mk(a, 0, arows, implicit.MR, b[t], 0, brows, 0, c[t], 0, crows, steps, True)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=256, help="steps (inner dimension) per call")
    ap.add_argument("--calls", type=int, default=20000, help="calls per thread")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    threads = get_num_threads()
    rng = np.random.default_rng(0)
    for pass_, nv, mk in (("forward", implicit.FORWARD_NV, implicit._mk_forward), ("gradients", implicit.NV, implicit._mk)):
        mr, width = implicit.MR, nv * implicit.lanes(np.float32)
        a = rng.random(args.steps * mr, dtype=np.float32)  # packed: step by step, MR values each
        b = rng.random((threads, args.steps * width), dtype=np.float32)  # one contiguous run of width per step
        c = np.zeros((threads, mr * width), dtype=np.float32)
        arows = np.arange(mr, dtype=np.int64)
        brows = np.arange(args.steps, dtype=np.int64) * width
        crows = np.arange(mr, dtype=np.int64) * width
        run = _runner(mk)
        run(a, arows, b, brows, c, crows, args.steps, 1)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(a, arows, b, brows, c, crows, args.steps, args.calls)
            best = min(best, time.perf_counter() - start)
        flops = 2.0 * threads * args.calls * args.steps * mr * width
        print(f"{pass_} tile {mr}x{width} float32 ({implicit.VECTOR_BYTES * 8}-bit vectors), {threads} threads, "
              f"{args.steps} steps: {flops / best / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
