"""LeNet-5 training throughput, convlayer vs PyTorch, same network, batch size and optimizer.

    python -m benchmarks.lenet [--model lenet5|lenet5-modern] [--images 60000] [--batch-size 64] [--threads 2]

Each framework trains from scratch for one pass over ``--images`` MNIST
training images (Adam, lr 1e-3), timed end to end including data
batching; the two runs alternate ``--repeats`` times and the best of each
is reported, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from convlayer.cli import positive_int

from . import steady_allocator


def _torch_lenet(kind: str):
    import torch
    from torch import nn

    from convlayer.models import C3_TABLE

    class ScaledTanh(nn.Module):
        def forward(self, x):
            return 1.7159 * torch.tanh(x * (2.0 / 3.0))

    class Subsampling(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))

        def forward(self, x):
            s = nn.functional.avg_pool2d(x, 2) * 4
            return s * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    class C3(nn.Module):
        """The partial connection table as one grouped convolution per fan-in (no unused weights)."""

        def __init__(self):
            super().__init__()
            self.groups = []
            self.convs = nn.ModuleList()
            for size in sorted({len(t) for t in C3_TABLE}):
                outs = [j for j, t in enumerate(C3_TABLE) if len(t) == size]
                idx = [i for j in outs for i in C3_TABLE[j]]
                self.groups.append((outs, torch.tensor(idx)))
                self.convs.append(nn.Conv2d(len(idx), len(outs), 5, groups=len(outs)))
            self.order = torch.tensor(np.argsort([j for outs, _ in self.groups for j in outs]))

        def forward(self, x):
            parts = [conv(x[:, idx]) for (outs, idx), conv in zip(self.groups, self.convs)]
            return torch.cat(parts, dim=1)[:, self.order]

    if kind == "lenet5":
        return nn.Sequential(nn.Conv2d(1, 6, 5), ScaledTanh(), Subsampling(6), ScaledTanh(), C3(), ScaledTanh(),
                             Subsampling(16), ScaledTanh(), nn.Conv2d(16, 120, 5), ScaledTanh(), nn.Flatten(),
                             nn.Linear(120, 84), ScaledTanh(), nn.Linear(84, 10))
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


def run_convlayer(kind, x, y, batch_size, seed=0):
    from convlayer import layers
    from convlayer.models import MODELS
    from convlayer.training import Adam, fit

    layers.seed(seed)
    model = MODELS[kind]()
    opt = Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    fit(model, x, y, optimizer=opt, epochs=1, batch_size=batch_size, seed=seed, progress=False)
    return time.perf_counter() - start


def run_torch(kind, x, y, batch_size, seed=0):
    import torch

    torch.manual_seed(seed)
    model = _torch_lenet(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    order = torch.from_numpy(rng.permutation(len(x)))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        opt.zero_grad()
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("lenet5", "lenet5-modern"), default="lenet5")
    parser.add_argument("--images", type=positive_int, default=60000)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--os-allocator", action="store_true",
                        help="keep glibc's default allocator settings (see benchmarks.steady_allocator)")
    args = parser.parse_args(argv)
    if not args.os_allocator:
        steady_allocator()

    import torch
    from threadpoolctl import threadpool_limits

    from convlayer.data import load_mnist

    torch.set_num_threads(args.threads)
    x, y = load_mnist("train")
    x, y = x[: args.images], y[: args.images]
    ours, theirs = [], []
    with threadpool_limits(limits=args.threads):
        for _ in range(args.repeats):
            ours.append(run_convlayer(args.model, x, y, args.batch_size))
            theirs.append(run_torch(args.model, x, y, args.batch_size))
    result = {
        "model": args.model, "images": len(x), "batch_size": args.batch_size, "threads": args.threads,
        "convlayer_images_per_second": len(x) / min(ours), "torch_images_per_second": len(x) / min(theirs),
        "torch_version": torch.__version__,
    }
    result["ratio"] = result["convlayer_images_per_second"] / result["torch_images_per_second"]
    print(f"{args.model}, batch {args.batch_size}, {len(x)} images, {args.threads} threads: "
          f"convlayer {result['convlayer_images_per_second']:.0f} images/s, "
          f"PyTorch {torch.__version__} {result['torch_images_per_second']:.0f} images/s, "
          f"ratio {result['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
