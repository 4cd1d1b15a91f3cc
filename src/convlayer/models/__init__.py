"""Reference networks."""

from .lenet5 import C3_TABLE, MODELS, lenet5, lenet5_modern

__all__ = ["C3_TABLE", "MODELS", "lenet5", "lenet5_modern"]
