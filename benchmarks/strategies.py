"""Every engine strategy, forced, on every problem of the suite: the measurements behind the planner's rules.

    python -m benchmarks.strategies [--filter TEXT] [--repeats 3]

Prints, per problem and pass, the time of each strategy that applies and
marks the planner's own choice with ``*`` (``-``: the strategy does not
apply and the planner's rules were used). Timings are convlayer's only;
run ``python -m benchmarks`` for the ratios to PyTorch.
"""

from __future__ import annotations

import argparse

import numpy as np

from convlayer.cli import positive_int
from convlayer.engine import gemm

from .__main__ import SUITE, _best, convlayer_passes, problem_data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="", help="only problems whose category or name contains this")
    ap.add_argument("--repeats", type=positive_int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    for p in SUITE:
        if args.filter and args.filter not in p.category and args.filter not in p.name:
            continue
        x, w, gy = problem_data(p, rng)
        for name, fn in convlayer_passes(p, x, w, gy).items():
            cells = [f"{_best(fn, args.repeats) * 1e3:7.1f}*"]
            for how in gemm.STRATEGIES:
                with gemm.force_strategy(how):
                    cells.append(f"{how} {_best(fn, args.repeats) * 1e3:7.1f}")
            print(f"{p.category:9s} {p.name:30s} {name:5s} planner {'  '.join(cells)} ms", flush=True)


if __name__ == "__main__":
    main()
