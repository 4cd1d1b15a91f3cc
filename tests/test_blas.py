"""The threaded product helper: every way of splitting gives NumPy's product, and BLAS threads are restored."""

import numpy as np
import pytest

from convlayer.engine import blas


@pytest.mark.parametrize("a_shape, b_shape", [
    ((6, 40, 300), (6, 300, 500)),  # batch split
    ((40, 300), (7, 300, 900)),  # broadcast a, batch split
    ((300, 400), (400, 900)),  # columns
    ((900, 400), (400, 300)),  # rows
    ((64, 20000), (20000, 30)),  # inner dimension, partial sums
])
def test_matmul_splits_agree_with_numpy(a_shape, b_shape, rng):
    a = rng.standard_normal(a_shape)
    b = rng.standard_normal(b_shape)
    expected = np.matmul(a, b)
    out = np.empty(expected.shape)
    assert blas.matmul(a, b, out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-10)


def test_matmul_restores_the_blas_thread_count(rng):
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    a = rng.standard_normal((300, 400))
    blas.matmul(a, a.T, np.empty((300, 300)))
    blas.matmul(a[:2, :2], a[:2, :2], np.empty((2, 2)))  # the small, unsplit path
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


def test_engine_products_all_go_through_blas_matmul():
    """A product computed with a plain ``@``/``np.matmul``/``np.dot`` may run on OpenBLAS's own threads,
    which then keep spinning and halve the speed of the compiled kernel after it (the Winograd kernel
    transform did, and the ResNet gate went from 1.4x to 2.0x PyTorch's time). Only blas.py calls BLAS."""
    import ast
    import pathlib

    import convlayer.engine

    offenders = []
    for path in pathlib.Path(convlayer.engine.__file__).parent.glob("*.py"):
        if path.name == "blas.py":
            continue
        functions = [f for f in ast.walk(ast.parse(path.read_text())) if isinstance(f, ast.FunctionDef)]
        for node in (n for f in functions for n in ast.walk(f)):  # module-level constants are computed once
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                offenders.append(f"{path.name}:{node.lineno} @")
            if isinstance(node, ast.Attribute) and node.attr in ("matmul", "dot", "tensordot", "einsum") and (
                    isinstance(node.value, ast.Name) and node.value.id == "np"):
                offenders.append(f"{path.name}:{node.lineno} np.{node.attr}")
    assert offenders == []
