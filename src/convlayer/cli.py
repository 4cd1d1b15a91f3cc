"""The ``convlayer`` command: demo, train, evaluate, predict, info."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

# The demo trains the modern LeNet-5 (ReLU, max pooling): it reaches 99% in a few epochs. The faithful
# 1998 network trains with `convlayer train --model lenet5` (see README for both results).
DEMO_DEFAULTS = dict(model="lenet5-modern", epochs=8, batch_size=64, lr=2e-3)


def _threads(n):
    """``--threads``: the library's one thread knob; ``None`` leaves the defaults."""
    from . import num_threads

    return contextlib.nullcontext() if n is None else num_threads(n)


def _fail(message: str) -> int:
    print(f"convlayer: error: {message}", file=sys.stderr)
    return 2


def _train(args) -> int:
    from . import io, layers, viz
    from .data import load_mnist
    from .models import MODELS
    from .training import SGD, Adam, CosineLR, evaluate, fit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_mnist("train", args.data_dir)
    x_test, y_test = load_mnist("test", args.data_dir)
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    layers.seed(args.seed)
    model = MODELS[args.model]()
    if args.optimizer == "adam":
        optimizer = Adam(model.parameters(), lr=args.lr)
    else:
        optimizer = SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    schedule = CosineLR(optimizer, steps, min_lr=args.lr * 0.01)
    print(f"training {args.model} ({model.num_parameters():,} parameters) on {len(x_train):,} MNIST images, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.optimizer} lr {args.lr}, seed {args.seed}")
    start = time.perf_counter()
    history = fit(model, x_train, y_train, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                  schedule=schedule, validation=(x_test, y_test), seed=args.seed, progress=not args.quiet)
    seconds = time.perf_counter() - start
    metrics = evaluate(model, x_test, y_test)
    model_path = out / f"{args.model}.safetensors"
    summary = {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "optimizer": args.optimizer, "seed": args.seed, "train_images": len(x_train),
        "test_accuracy": metrics["accuracy"], "test_errors": metrics["errors"], "test_loss": metrics["loss"],
        "train_seconds": round(seconds, 1),
        "images_per_second": round(float(np.mean(history.images_per_second)), 1),
        "history": {k: v for k, v in history.as_dict().items() if k != "batch_loss"},
    }
    io.save(model, model_path, extra={k: v for k, v in summary.items() if k != "history"})
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    figure = out / f"{args.model}.png"
    viz.training_figure(figure, model, history, x_test[:1], int(y_test[0]),
                        title=f"{args.model} on MNIST: test accuracy {100 * metrics['accuracy']:.2f}%")
    print(f"test accuracy {100 * metrics['accuracy']:.2f}% ({metrics['errors']} errors in {len(y_test)}), "
          f"trained in {seconds:.0f} s ({summary['images_per_second']:.0f} images/s)")
    print(f"wrote {model_path}, {figure} and {out / 'metrics.json'}")
    return 0


def _load_model(path):
    from . import io

    return io.load(path)


def _evaluate(args) -> int:
    from .data import load_mnist
    from .training import evaluate

    model = _load_model(args.model)
    x, y = load_mnist(args.split, args.data_dir)
    m = evaluate(model, x, y, progress=not args.quiet)
    print(f"{args.split} accuracy {100 * m['accuracy']:.2f}% ({m['errors']} errors in {len(y)}), loss {m['loss']:.4f}")
    return 0


def _read_images(paths):
    """Images from PNG/JPEG (via Pillow), ``.npy`` or IDX files, as uint8-range ``(N, 28, 28)`` floats."""
    from .data import read_idx

    out, names = [], []
    for p in paths:
        suffix = "".join(Path(p).suffixes).lower()
        if not os.path.isfile(p):
            raise FileNotFoundError(f"image file not found: {p}")
        if suffix.endswith(".npy"):
            arr = np.load(p, allow_pickle=False)
        elif "idx" in suffix or "ubyte" in Path(p).name:
            arr = read_idx(p)
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(p) as img:
                    arr = np.asarray(img.convert("L").resize((28, 28)), dtype=np.float64)
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"{p}: not a readable image ({exc})") from exc
            if arr.mean() > 127:  # dark digit on light paper: invert to MNIST's convention
                arr = 255 - arr
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (28, 28):
            raise ValueError(f"{p}: expected 28x28 images, got shape {arr.shape}")
        if not np.isfinite(arr).all():  # NaN would predict nonsense; values out of 0..255 are clipped below
            raise ValueError(f"{p}: pixel values must be finite, got {int(np.size(arr) - np.isfinite(arr).sum())} "
                             "NaN or infinite")
        out.append(arr)
        names += [p] if len(arr) == 1 else [f"{p}[{i}]" for i in range(len(arr))]
    return np.concatenate(out), names


def _predict(args) -> int:
    from .data import preprocess
    from .training import predict_proba

    model = _load_model(args.model)
    images, names = _read_images(args.images)
    probs = predict_proba(model, preprocess(np.clip(images, 0, 255)))
    for name, p in zip(names, probs):
        k = int(np.argmax(p))
        print(f"{name}: {k} (p={p[k]:.3f})")
    return 0


def _info(args) -> int:
    from . import geometry, io

    meta = io.read_metadata(args.model)
    model = io.load(args.model)
    shape = tuple(args.input_shape)
    print(f"{args.model}: convlayer model, {model.num_parameters():,} parameters")
    if "extra" in meta:
        extra = meta["extra"]
        print("trained: " + ", ".join(f"{k}={extra[k]}" for k in sorted(extra)))
    print(f"{'layer':<34}{'output shape':<22}{'parameters':>12}{'MFLOPs':>10}")
    total_flops = 0
    rf_layers = []
    layers = getattr(model, "layers", [model])
    for i, layer in enumerate(layers):
        n_params = layer.num_parameters()
        flops = layer.flops(shape)
        shape = layer.output_shape(shape)
        total_flops += flops
        print(f"{f'{i}: {type(layer).__name__}':<34}{str(shape):<22}{n_params:>12,}{flops / 1e6:>10.3f}")
        geo = layer.spatial_geometry()
        if geo is not None:
            pad = geo["padding"]
            lo = pad if isinstance(pad, int) else 0
            rf_layers.append(dict(kernel_size=geo["kernel_size"][0], stride=geo["stride"][0],
                                  dilation=geo["dilation"][0], padding=lo))
    print(f"total: {model.num_parameters():,} parameters, {total_flops / 1e6:.3f} MFLOPs per forward pass "
          f"at input {tuple(args.input_shape)}")
    if rf_layers:
        rf = geometry.receptive_field(rf_layers)
        print(f"receptive field (first spatial axis): {rf.size} inputs, effective stride {rf.stride}, "
              f"offset {rf.offset}")
    return 0


def positive_int(text: str) -> int:
    """``argparse`` type of the counts (epochs, batch size, images, threads): an int of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type of the learning rate: a finite float above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convlayer", description="Convolutional layers on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True)

    def training_options(p, defaults):
        p.add_argument("--epochs", type=positive_int, default=defaults["epochs"], help="passes over the training set")
        p.add_argument("--batch-size", type=positive_int, default=defaults["batch_size"])
        p.add_argument("--lr", type=positive_float, default=defaults["lr"], help="peak learning rate (cosine decay)")
        p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
        p.add_argument("--seed", type=int, default=0, help="seeds initialisation and shuffling")
        p.add_argument("--threads", type=positive_int, default=None, help="BLAS threads (default: all cores)")
        p.add_argument("--out", default=defaults.get("out", "runs/train"), help="output directory")
        p.add_argument("--data-dir", default=None, help="read the MNIST-named IDX files from this folder")
        p.add_argument("--limit", type=positive_int, default=None, help="train on the first N images only")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="train LeNet-5 (modern variant) on the bundled MNIST, save the model and a figure")
    training_options(demo, {**DEMO_DEFAULTS, "out": "runs/demo"})
    demo.set_defaults(func=_train, model=DEMO_DEFAULTS["model"])

    train = sub.add_parser("train", help="train a model on MNIST (or IDX files in --data-dir)")
    train.add_argument("--model", choices=("lenet5", "lenet5-modern"), default="lenet5-modern")
    training_options(train, {**DEMO_DEFAULTS, "epochs": 20})
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="accuracy of a saved model on the MNIST test (or train) set")
    ev.add_argument("model", help="a .safetensors file written by convlayer")
    ev.add_argument("--split", choices=("test", "train"), default="test")
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--threads", type=positive_int, default=None)
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="classify 28x28 digit images (PNG/JPEG, .npy or IDX)")
    pr.add_argument("model")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--threads", type=positive_int, default=None)
    pr.set_defaults(func=_predict)

    info = sub.add_parser("info", help="layers, output shapes, parameters, FLOPs and receptive field of a model")
    info.add_argument("model")
    info.add_argument("--input-shape", type=positive_int, nargs="+", default=[1, 1, 32, 32])
    info.add_argument("--threads", type=positive_int, default=None)
    info.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _threads(getattr(args, "threads", None)):
            return args.func(args)
    except (FileNotFoundError, ValueError, FloatingPointError) as exc:  # FloatingPointError: training diverged
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
