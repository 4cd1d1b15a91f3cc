"""Issue-2 gate: ResNet 3x3 layer (N=8, C=K=64, 56x56) forward, convlayer vs PyTorch, interleaved rounds.

    python -m benchmarks.gate [--rounds 10] [--threads 2]

Each round times both (best of 5 after a warm-up) one after the other, so
both see the same machine load; it prints every round's ratio and the median.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from convlayer.cli import positive_int

from . import steady_allocator
from .__main__ import _best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--os-allocator", action="store_true",
                        help="keep glibc's default allocator settings (see benchmarks.steady_allocator)")
    args = parser.parse_args(argv)
    if not args.os_allocator:
        steady_allocator()

    import torch
    import torch.nn.functional as TF
    from threadpoolctl import threadpool_limits

    import convlayer.functional as F

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 56, 56)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    ratios = []
    with threadpool_limits(limits=args.threads), torch.no_grad():
        for i in range(args.rounds):
            ours = _best(lambda: F.conv(x, w, padding=1), 5)
            theirs = _best(lambda: TF.conv2d(xt, wt, padding=1), 5)
            ratios.append(ours / theirs)
            print(f"round {i + 1}: convlayer {ours * 1e3:.1f} ms, PyTorch {theirs * 1e3:.1f} ms, "
                  f"convlayer/PyTorch {ours / theirs:.2f}x")
    print(f"median convlayer/PyTorch time: {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
