"""Layers with few input channels (stems, one-channel inputs): the measurements behind two planner rules.

The rules: ``gemm.FEW_ROWS_DIRECT_MIN_IMAGES`` (forwards),
``gemm.FEW_CHANNELS_DIRECT_GRAD_WEIGHT`` (weight gradients) and
``gemm.IMPLICIT_GRAD_INPUT_MIN_ROWS`` (input gradients; with AVX2, also
``gemm.FEW_ROWS_DIRECT_GRAD_INPUT_ROWS``), and the lines of
``gemm.strategy`` that use them.

    python -m benchmarks.few_rows [--grad-weight | --grad-input] [--rounds 3] [--repeats 7]

Times the forward (or, with ``--grad-weight`` or ``--grad-input``, that gradient) by the
patch matrix, the implicit GEMM and the direct kernels, forced, by the
planner's choice, and PyTorch's, in turns within one process (``--rounds``
rounds, best of ``--repeats`` calls each, as the suite times them), and
prints every round's time in ms.
"""

from __future__ import annotations

import argparse

import numpy as np

from convlayer.cli import positive_int

from . import steady_allocator
from .__main__ import _best

# (input shape, weight shape, stride, padding)
CASES = [
    ((8, 1, 16000), (64, 1, 10), 5, 0),  # the suite's 1-D stem
    ((8, 3, 224, 224), (64, 3, 3, 3), 1, 1),  # an RGB 3x3 stem
    ((64, 1, 28, 28), (32, 1, 5, 5), 1, 2),  # one channel, 5x5
    ((16, 3, 112, 112), (32, 3, 3, 3), 2, 1),  # a strided RGB stem
    ((32, 2, 64, 64), (32, 2, 3, 3), 1, 1),
    ((8, 8, 16000), (64, 8, 3), 1, 1),  # 24 rows, 1-D
    ((2, 3, 16, 56, 56), (64, 3, 3, 3, 3), 1, 1),  # the suite's 3-D stem: 2 images
    ((8, 3, 224, 224), (64, 3, 7, 7), 2, 3),  # the suite's ResNet stem
]


def main(argv=None, cases=CASES) -> int:
    import torch
    import torch.nn.functional as TF

    import convlayer.functional as F
    from convlayer.engine import gemm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--grad-weight", action="store_true", help="time the weight gradient instead of the forward")
    which.add_argument("--grad-input", action="store_true", help="time the input gradient instead of the forward")
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--repeats", type=positive_int, default=7)
    args = ap.parse_args(argv)
    steady_allocator()
    rng = np.random.default_rng(0)
    for xs, ws, stride, padding in cases:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        tconv = {3: TF.conv1d, 4: TF.conv2d, 5: TF.conv3d}[x.ndim]
        kw = dict(stride=stride, padding=padding)
        if args.grad_weight or args.grad_input:
            gy = rng.standard_normal(F.conv(x, w, **kw).shape).astype(np.float32)
            gyt = torch.from_numpy(gy)
            geometry = (stride,) * (x.ndim - 2), (padding,) * (x.ndim - 2), (1,) * (x.ndim - 2)  # and dilation
            mask = [args.grad_input, args.grad_weight, False]
            fns = {"torch": lambda: torch.ops.aten.convolution_backward(
                gyt, xt, wt, None, *geometry, False, [0] * (x.ndim - 2), 1, mask)}
            grads = ("input",) if args.grad_input else ("weight",)
            call = lambda: F.conv_backward(gy, x, w, **kw, grads=grads)  # noqa: E731
        else:
            fns = {"torch": lambda: tconv(xt, wt, None, stride, padding)}
            call = lambda: F.conv(x, w, **kw)  # noqa: E731
        fns["planner"] = call
        for how in ("cols", "implicit", "direct"):
            def run(how=how):
                with gemm.force_strategy(how):
                    return call()
            fns[how] = run
        times = {name: [] for name in fns}
        with torch.no_grad():
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    times[name].append(_best(fn, args.repeats) * 1e3)
        cells = "  ".join(f"{name} " + "/".join(f"{t:.2f}" for t in ts) for name, ts in times.items())
        print(f"x {xs} w {ws} stride {stride} padding {padding}: {cells} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
