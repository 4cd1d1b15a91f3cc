"""The ``convlayer`` command."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _demo(args) -> int:
    """A short tour of the operations (replaced by LeNet-5 training when it lands)."""
    from . import functional as F

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    w = rng.standard_normal((8, 3, 5, 5)).astype(np.float32)
    for padding, mode, stride in (("valid", "zeros", 1), ("same", "reflect", 2), ("full", "circular", 1)):
        y = F.conv(x, w, stride=stride, padding=padding, padding_mode=mode)
        print(f"conv {x.shape} * {w.shape} stride={stride} padding={padding!r} mode={mode!r} -> {y.shape}")
    y = F.conv(x, w, padding="same")
    back = F.conv_transpose(y, w, padding="same")
    print(f"conv_transpose {y.shape} -> {back.shape}")
    print(f"max_pool {y.shape} -> {F.max_pool(y, 2).shape}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convlayer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demonstration")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
