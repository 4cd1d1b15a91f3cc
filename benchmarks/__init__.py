"""Benchmarks: convlayer side by side with PyTorch (and JAX when installed) in one process."""
