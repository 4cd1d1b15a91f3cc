"""convlayer: N-dimensional convolutional layers on the CPU, exact and trainable."""

from . import functional, geometry
from ._config import (
    get_memory_budget,
    get_num_threads,
    num_threads,
    set_num_threads,
    get_workspace_limit,
    memory_budget,
    set_memory_budget,
    set_workspace_limit,
)
from .engine.gemm import release_workspace
from .functional import pad, pad_adjoint

__version__ = "0.1.0"

__all__ = [
    "functional",
    "geometry",
    "pad",
    "pad_adjoint",
    "get_memory_budget",
    "set_memory_budget",
    "memory_budget",
    "get_workspace_limit",
    "set_workspace_limit",
    "set_num_threads",
    "release_workspace",
    "get_num_threads",
    "num_threads",
    "__version__",
]
