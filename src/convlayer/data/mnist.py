"""MNIST, bundled with the package (no download), read from IDX with checksums verified.

MNIST is by Yann LeCun and Corinna Cortes, CC BY-SA 3.0. The four files in
``convlayer/data/mnist/`` are the original release; ``SHA256SUMS`` holds
the SHA-256 of their decompressed content, checked on every load.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..geometry import check_int
from .idx import read_idx

__all__ = ["BUNDLED_DIR", "FILES", "load_mnist", "preprocess"]

BUNDLED_DIR = Path(__file__).resolve().parent / "mnist"

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# LeCun et al. 1998: background -0.1, foreground 1.175, so inputs have roughly zero mean and unit variance.
BACKGROUND, FOREGROUND = -0.1, 1.175


def _checksums(directory: Path) -> dict[str, str]:
    sums = directory / "SHA256SUMS"
    if not sums.is_file():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0]
    return out


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name}(.gz) not found in {directory}")


def load_raw(split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` uint8 of ``split`` ("train" or "test").

    ``data_dir`` reads the same four file names (gzipped or raw) from
    another folder; its ``SHA256SUMS`` is checked when present. The bundled
    copy is always checked.
    """
    if split not in FILES:
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    directory = BUNDLED_DIR if data_dir is None else Path(os.fspath(data_dir))
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory not found: {directory}")
    sums = _checksums(directory)
    if data_dir is None and len(sums) != 4:
        raise ValueError(f"bundled MNIST checksums missing or incomplete in {directory / 'SHA256SUMS'}")
    image_name, label_name = FILES[split]
    images = read_idx(_find(directory, image_name), sha256=sums.get(image_name))
    labels = read_idx(_find(directory, label_name), sha256=sums.get(label_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: images {images.shape} and labels {labels.shape} do not form a data set")
    return images, labels


def preprocess(images: np.ndarray, pad: int = 2, dtype=np.float32) -> np.ndarray:
    """uint8 ``(N, H, W)`` to ``(N, 1, H + 2*pad, W + 2*pad)`` scaled to [-0.1, 1.175], padded with background."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"preprocess: images must be (N, H, W), got shape {images.shape}")
    check_int("preprocess", "pad", pad, 0)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"preprocess: dtype must be float32 or float64, got {np.dtype(dtype)}")
    dtype = np.dtype(dtype).type
    x = images.astype(dtype) * dtype((FOREGROUND - BACKGROUND) / 255.0) + dtype(BACKGROUND)
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), constant_values=BACKGROUND)
    return x[:, None]


def load_mnist(split: str = "train", data_dir=None, pad: int = 2, dtype=np.float32):
    """``(x, y)``: ``x`` of shape ``(N, 1, 32, 32)`` (with ``pad=2``) and int64 labels."""
    images, labels = load_raw(split, data_dir)
    return preprocess(images, pad, dtype), labels.astype(np.int64)
