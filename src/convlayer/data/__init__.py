"""Data sets and batching: IDX reader, bundled MNIST."""

from .batching import batches
from .idx import read_idx, write_idx
from .mnist import load_mnist, load_raw, preprocess

__all__ = ["batches", "read_idx", "write_idx", "load_mnist", "load_raw", "preprocess"]
