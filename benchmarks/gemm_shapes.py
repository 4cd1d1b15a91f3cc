"""The large layers' passes beside OpenBLAS's GEMM of the same shape: how near the 70% line the BLAS itself gets.

    python -m benchmarks.gemm_shapes [--filter TEXT[,TEXT]] [--rounds 3] [--repeats 5] [--threads 2] [--json F]

Issue 4 asks the passes of the large standard layers (the suite's 36,
:func:`benchmarks.__main__._is_large`) for 70% of the machine's float32
GEMM throughput, which the suite measures on one square product of 2048
(:func:`benchmarks.__main__.gemm_peak`). Every such pass is one product
of the patch matrix: with ``M`` output channels, ``K`` input channels
times kernel taps and ``N`` images times output positions (for a
transposed layer, its input's positions; :func:`shapes`), the forward is
``(M x K) (K x N)``, the input gradient ``(K x M) (M x N)`` before its
scatter, and the weight gradient ``(M x N) (N x K)``. This runner times
convlayer's pass and NumPy's BLAS on that product alone, operands ready,
in turns within one process (``--rounds`` rounds, best of ``--repeats``
calls each; each keeps its best), with the square product before and
after the passes, and prints each one's GFLOP/s and share of the higher
square figure. The BLAS product is a bound that no convolution reaches
by the patch matrix, which adds the copy; convlayer's implicit GEMM
reads its operands where they lie instead.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from convlayer.cli import positive_int

from . import steady_allocator
from .__main__ import (LARGE_MIN_GEMM_SHARE, PASSES, SUITE, _best, _is_large, convlayer_passes, flops, gemm_peak,
                       problem_data)


def shapes(p, out_shape) -> dict:
    """``{pass: (m, k, n)}``: the product ``(m x k) (k x n)`` of each pass of problem ``p`` (output shape
    ``out_shape``) by the patch matrix, as in the module's doc."""
    taps = math.prod(p.kernel)
    if p.transposed:  # the forward of a transposed layer is the input gradient of the layer it transposes
        outputs, inputs, positions = p.c, (p.k // p.groups) * taps, p.n * math.prod(p.size)
    else:
        outputs, inputs, positions = p.k, (p.c // p.groups) * taps, p.n * math.prod(out_shape[2:])
    ahead = (outputs, inputs, positions)  # (M x K) (K x N)
    back = (inputs, outputs, positions)  # (K x M) (M x N)
    weights = (outputs, positions, inputs)  # (M x N) (N x K)
    return dict(zip(PASSES, (back, ahead, weights) if p.transposed else (ahead, back, weights)))


def _product(m, k, n, rng):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    return lambda: a @ b


def run(problems, rounds: int, repeats: int, threads: int, rng) -> list:
    """One row per pass of each problem: its product's shape, the pass's GFLOP, and the best times over the
    rounds of convlayer's pass and of the BLAS product."""
    from threadpoolctl import threadpool_limits

    import convlayer

    rows = []
    with threadpool_limits(limits=threads), convlayer.num_threads(threads):
        for p in problems:
            x, w, gy = problem_data(p, rng)
            gflop = flops(p, gy.shape) / 1e9
            if not _is_large(vars(p), gflop):
                continue
            ours = convlayer_passes(p, x, w, gy)
            for name, (m, k, n) in shapes(p, gy.shape).items():
                blas = _product(m, k, n, rng)
                best = {"convlayer": math.inf, "blas": math.inf}
                for r in range(rounds):
                    for who, fn in (("convlayer", ours[name]), ("blas", blas))[::1 if r % 2 == 0 else -1]:
                        best[who] = min(best[who], _best(fn, repeats))
                rows.append(dict(category=p.category, problem=p.name, pass_=name, shape=[m, k, n], gflop=gflop,
                                 convlayer=best["convlayer"], blas=best["blas"]))
                print(_format(rows[-1]), flush=True)
    return rows


def _format(row, peak=None) -> str:
    m, k, n = row["shape"]
    cells = [f"{row['category']:<10}{row['problem']:<30}{row['pass_']:<6}{f'{m}x{k}x{n}':>18}"]
    for who in ("convlayer", "blas"):
        rate = row["gflop"] / row[who]
        share = f" {rate / peak:4.0%}" if peak else ""
        cells.append(f"{who} {row[who] * 1e3:6.1f}ms {rate:6.1f}GF/s{share}")
    return "  ".join(cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="", help="only problems whose category or name contains one of these "
                    "comma-separated texts")
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--json", help="write the rows and the square GEMM figures to this file")
    args = ap.parse_args(argv)
    steady_allocator()
    keys = args.filter.split(",")
    problems = [p for p in SUITE if any(k in p.category or k in p.name for k in keys)]
    if not problems:
        ap.error(f"--filter {args.filter!r} matches no category or problem name")
    before = gemm_peak(args.threads)
    rows = run(problems, args.rounds, args.repeats, args.threads, np.random.default_rng(0))
    after = gemm_peak(args.threads)
    peak = max(before, after)
    print(f"\nsquare float32 GEMM (2048): {before:.1f} GFLOP/s before, {after:.1f} after; shares of {peak:.1f}")
    for row in rows:
        print(_format(row, peak))
    line = LARGE_MIN_GEMM_SHARE * peak
    for who in ("convlayer", "blas"):
        under = sum(row["gflop"] / row[who] < line for row in rows)
        print(f"{who}: {under} of {len(rows)} passes below {LARGE_MIN_GEMM_SHARE:.0%} ({line:.0f} GFLOP/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gemm_gflops=[before, after], rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
