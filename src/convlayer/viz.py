"""Figures: learned kernels, feature maps of one input through the network, training curves."""

from __future__ import annotations

import numpy as np

from .layers import Layer, LeakyReLU, ReLU, ScaledTanh, Sequential, Sigmoid, Tanh

__all__ = ["feature_maps", "training_figure"]

_ACTIVATIONS = (ReLU, LeakyReLU, ScaledTanh, Tanh, Sigmoid)


def feature_maps(model: Sequential, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``[(stage name, maps (C, H, W))]`` for one input ``x (1, C, H, W)``: each spatial stage after its activation."""
    model.eval()
    stages = []
    name = None
    for i, layer in enumerate(model.layers):
        x = layer.forward(x)
        if not isinstance(layer, _ACTIVATIONS):
            name = f"{i}: {type(layer).__name__}"
        following = model.layers[i + 1] if i + 1 < len(model.layers) else None
        if x.ndim == 4 and x.shape[-1] > 1 and not isinstance(following, _ACTIVATIONS):
            stages.append((name, x[0]))
    return stages


def _first_conv_kernels(model: Layer):
    for _, p in model.named_parameters():
        if p.value.ndim == 4:
            return p.value
    return None


def training_figure(path, model: Sequential, history, image: np.ndarray, label: int | None = None,
                    title: str = "") -> None:
    """Write one PNG: first-layer kernels, feature maps of ``image (1, C, H, W)``, training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = feature_maps(model, image)
    logits = model.forward(image)[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    kernels = _first_conv_kernels(model)
    max_maps = max([maps.shape[0] for _, maps in stages] + [8])
    cols = min(max_maps, 16)
    rows_maps = sum(-(-maps.shape[0] // cols) for _, maps in stages)
    fig = plt.figure(figsize=(cols * 0.9 + 1, 3.2 + 0.9 * (rows_maps + 2) + 3))
    grid = fig.add_gridspec(3, 1, height_ratios=[1.4, 0.9 * (rows_maps + 1), 3.0], hspace=0.35)

    top = grid[0].subgridspec(1, 3, width_ratios=[1.0, 2.5, 2.0], wspace=0.3)
    ax = fig.add_subplot(top[0])
    ax.imshow(image[0, 0], cmap="gray")
    ax.set_title(f"input (label {label})" if label is not None else "input", fontsize=9)
    ax.axis("off")
    if kernels is not None:
        k = kernels[:, 0]
        sub = top[1].subgridspec(1, len(k), wspace=0.1)
        lim = np.abs(k).max()
        for i, kern in enumerate(k):
            a = fig.add_subplot(sub[i])
            a.imshow(kern, cmap="RdBu_r", vmin=-lim, vmax=lim)
            a.axis("off")
            if i == 0:
                a.set_title("learned first-layer kernels", fontsize=9, loc="left")
    ax = fig.add_subplot(top[2])
    ax.bar(range(len(probs)), probs, color="tab:blue")
    ax.set_xticks(range(len(probs)))
    ax.set_ylim(0, 1)
    ax.set_title(f"prediction: {int(np.argmax(probs))}", fontsize=9)

    maps_grid = grid[1].subgridspec(max(rows_maps, 1), cols, wspace=0.05, hspace=0.35)
    row = 0
    for name, maps in stages:
        for j, fmap in enumerate(maps):
            a = fig.add_subplot(maps_grid[row + j // cols, j % cols])
            a.imshow(fmap, cmap="viridis")
            a.axis("off")
            if j == 0:
                a.set_title(f"{name} {maps.shape[1]}x{maps.shape[2]}", fontsize=8, loc="left")
        row += -(-maps.shape[0] // cols)

    bottom = grid[2].subgridspec(1, 2, wspace=0.25)
    ax = fig.add_subplot(bottom[0])
    losses = np.asarray(history.batch_loss)
    if losses.size:
        window = max(1, losses.size // 100)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        steps_per_epoch = losses.size / max(len(history.epoch_loss), 1)
        ax.plot(np.arange(losses.size) / steps_per_epoch, losses, color="0.8", lw=0.5, label="batch")
        ax.plot((np.arange(smooth.size) + window - 1) / steps_per_epoch, smooth, color="tab:blue", label="smoothed")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(bottom[1])
    epochs = np.arange(1, len(history.epoch_accuracy) + 1)
    ax.plot(epochs, 100 * (1 - np.asarray(history.epoch_accuracy)), "o-", label="train error")
    if history.val_accuracy:
        ax.plot(epochs, 100 * (1 - np.asarray(history.val_accuracy)), "s-", label="test error")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
