"""Whether the machine's cores are shared at the moment: each CPU alone, then two at once, sample by sample.

On a shared VM the host may run two of the guest's virtual CPUs on one
physical core (SMT siblings), or a busy neighbour on a sibling, for a
while. A single-threaded kernel then runs at full speed on either CPU,
but two threads at once run at about half speed each: a two-thread
compute-bound pass takes up to twice as long, PyTorch's and convlayer's
alike, in whichever round it falls. This runner shows those moments:

    python -m benchmarks.cores [--samples 20] [--size 384] [--cpus 0,1]

Each sample times a single-threaded float32 GEMM (NumPy/BLAS, ``--size``
cubed, best of ``--repeats``) pinned to each CPU in turn, then on all of
them at once (one Python thread pinned to each CPU; NumPy releases the
GIL), and prints the GFLOP/s of each and, with ``shared``, the samples
in which some CPU ran at under :data:`SHARED_SHARE` of its speed alone.
Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

from convlayer.cli import positive_int

# Share of its speed alone under which a CPU counts as shared while all run at once.
SHARED_SHARE = 0.7


def _gemm_rate(cpu: int, a: np.ndarray, out: np.ndarray, repeats: int, rates: dict) -> None:
    """GFLOP/s of ``a @ a`` on ``cpu`` alone (this thread pinned there), best of ``repeats``, into ``rates``."""
    os.sched_setaffinity(0, {cpu})
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, a, out=out)
        best = min(best, time.perf_counter() - start)
    rates[cpu] = 2 * a.shape[0] ** 3 / best / 1e9


def _on(cpus, size: int, repeats: int) -> dict:
    """Each CPU's GEMM rate, with one pinned thread per CPU in ``cpus`` running at the same time."""
    rng = np.random.default_rng(0)
    work = {c: (rng.standard_normal((size, size)).astype(np.float32), np.empty((size, size), np.float32))
            for c in cpus}
    rates: dict = {}
    threads = [threading.Thread(target=_gemm_rate, args=(c, *work[c], repeats, rates)) for c in cpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rates


def sample(cpus, size: int, repeats: int) -> dict:
    """One sample: ``alone[cpu]`` and ``together[cpu]`` GFLOP/s, and ``shared``: whether some CPU ran at under
    :data:`SHARED_SHARE` of its speed alone while all ran."""
    alone = {c: _on([c], size, repeats)[c] for c in cpus}
    together = _on(cpus, size, repeats)
    shared = any(together[c] < SHARED_SHARE * alone[c] for c in cpus)
    return dict(alone=alone, together=together, shared=shared)


def _cpu_list(text: str) -> list[int]:
    try:
        cpus = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be CPU numbers separated by commas, got {text!r}") from None
    available = os.sched_getaffinity(0)
    if len(set(cpus)) != len(cpus) or not set(cpus) <= available:
        raise argparse.ArgumentTypeError(f"must be distinct CPUs among {sorted(available)}, got {text!r}")
    return cpus


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=positive_int, default=20)
    ap.add_argument("--size", type=positive_int, default=384, help="GEMM size (size x size, float32)")
    ap.add_argument("--repeats", type=positive_int, default=40, help="GEMMs per CPU per sample, the best kept")
    ap.add_argument("--cpus", type=_cpu_list, default=None, help="CPUs to use (default: all this process may use)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    cpus = args.cpus or sorted(os.sched_getaffinity(0))
    shared = 0
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(args.samples):
            s = sample(cpus, args.size, args.repeats)
            shared += s["shared"]
            cells = "  ".join(f"cpu{c} {s['alone'][c]:5.0f} alone {s['together'][c]:5.0f} together" for c in cpus)
            print(f"sample {i + 1:3d}  {cells}  GFLOP/s{'  shared' if s['shared'] else ''}", flush=True)
    print(f"{shared} of {args.samples} samples with a CPU under {SHARED_SHARE:.0%} of its speed alone while all ran")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
