"""Pooling against PyTorch (float64) and the naive reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import convlayer.functional as CF

import reference as ref
from helpers import max_rel_err

TMAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
TAVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@st.composite
def pool_case(draw, dilation=True):
    rank = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dil = tuple(draw(st.integers(1, 2)) if dilation else 1 for _ in range(rank))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)  # PyTorch's limit
    # PyTorch's avg_pool3d also wants the unpadded input at least as large as the kernel.
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p, 0 if dilation else k), 9))
                 for k, d, p in zip(kernel, dil, padding))
    return dict(rank=rank, kernel=kernel, stride=stride, dilation=dil, padding=padding, size=size,
                ceil_mode=draw(st.booleans()), n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)))


@settings(max_examples=150)
@given(case=pool_case(), seed=st.integers(0, 2**31 - 1))
def test_max_pool_matches_torch(case, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["n"], case["c"], *case["size"]))
    kw = dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
              dilation=case["dilation"], ceil_mode=case["ceil_mode"])
    y, idx = CF.max_pool(x, return_indices=True, **kw)
    # A window lying wholly in the padding gives -inf and index -1 here; PyTorch returns an
    # out-of-range index for it and its backward then writes out of bounds, so such cases
    # are checked against the reference instead.
    if not np.isfinite(y).all():
        expected = ref.max_pool(x, case["kernel"], case["stride"], [(p, p) for p in case["padding"]],
                                case["dilation"], case["ceil_mode"])
        np.testing.assert_array_equal(y, expected)
        assert np.all(idx[np.isneginf(y)] == -1)
        return
    xt = torch.tensor(x, requires_grad=True)
    yt, it = TMAX[case["rank"]](xt, return_indices=True, **kw)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(CF.max_pool_backward(gy, x, **kw), xt.grad.numpy(), rtol=1e-13, atol=1e-13)


@settings(max_examples=150)
@given(case=pool_case(dilation=False), include=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_avg_pool_matches_torch(case, include, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["n"], case["c"], *case["size"]))
    kw = dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
              ceil_mode=case["ceil_mode"], count_include_pad=include)
    y = CF.avg_pool(x, **kw)
    xt = torch.tensor(x, requires_grad=True)
    yt = TAVG[case["rank"]](xt, **kw)
    assert y.shape == tuple(yt.shape)
    assert max_rel_err(y, yt.detach().numpy()) < 1e-13
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    assert max_rel_err(CF.avg_pool_backward(gy, x, **kw), xt.grad.numpy()) < 1e-13


@settings(max_examples=60)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(1, 4), ceil=st.booleans(), include=st.booleans(),
       big_pad=st.integers(0, 4))
def test_pools_beyond_torch_match_reference(seed, rank, ceil, include, big_pad):
    """Dilated average pooling, padding larger than half the kernel, 4-D."""
    rng = np.random.default_rng(seed)
    kernel = tuple(int(v) for v in rng.integers(1, 4, rank))
    stride = tuple(int(v) for v in rng.integers(1, 3, rank))
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    pads = tuple((big_pad, int(rng.integers(0, 3))) for _ in range(rank))
    size = tuple(int(rng.integers(d * (k - 1) + 1, d * (k - 1) + 4)) for k, d in zip(kernel, dilation))
    x = rng.standard_normal((1, 2, *size))
    got = CF.max_pool(x, kernel, stride, pads, dilation, ceil)
    np.testing.assert_array_equal(got, ref.max_pool(x, kernel, stride, pads, dilation, ceil))
    got = CF.avg_pool(x, kernel, stride, pads, dilation, ceil, include)
    assert max_rel_err(got, ref.avg_pool(x, kernel, stride, pads, dilation, ceil, include)) < 1e-13


def test_pool_same_padding_and_defaults(rng):
    x = rng.standard_normal((2, 3, 7, 9))
    assert CF.max_pool(x, 2).shape == (2, 3, 3, 4)
    assert CF.max_pool(x, 3, 2, padding="same").shape == (2, 3, 4, 5)
    assert CF.avg_pool(x, (2, 3), padding="same").shape == (2, 3, 4, 3)


def test_max_pool_nan_propagates(rng):
    x = rng.standard_normal((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.nan
    y = CF.max_pool(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(y[0, 0, 1, 1])
    g = CF.max_pool_backward(np.ones_like(y), x, 2)
    assert g[0, 0, 1, 1] == 1.0 and g[0, 0, :2, :2].sum() == 1.0


def test_global_pools(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_array_equal(CF.global_max_pool(x), x.max(axis=(2, 3)))
    np.testing.assert_allclose(CF.global_avg_pool(x), x.mean(axis=(2, 3)))
    assert CF.global_avg_pool(x, keepdims=True).shape == (2, 3, 1, 1)
    gy = rng.standard_normal((2, 3))
    g = CF.global_max_pool_backward(gy, x)
    xt = torch.tensor(x, requires_grad=True)
    xt.amax(dim=(2, 3)).backward(torch.tensor(gy))
    np.testing.assert_allclose(g, xt.grad.numpy())
    ga = CF.global_avg_pool_backward(gy, x)
    np.testing.assert_allclose(ga, np.broadcast_to(gy[:, :, None, None] / 20, x.shape))
    xc = np.moveaxis(x, 1, -1)
    np.testing.assert_allclose(CF.global_avg_pool(xc, data_format="channels_last"), x.mean(axis=(2, 3)))
    with pytest.raises(ValueError, match="grad_y must hold one value per"):
        CF.global_avg_pool_backward(np.ones(5), x)


def test_finite_differences_pools(rng):
    x = rng.standard_normal((2, 2, 7, 6))
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    r = rng.standard_normal(CF.avg_pool(x, **kw).shape)
    v = rng.standard_normal(x.shape)
    h = 1e-6
    num = (np.sum(r * CF.avg_pool(x + h * v, **kw)) - np.sum(r * CF.avg_pool(x - h * v, **kw))) / (2 * h)
    assert abs(num - np.vdot(CF.avg_pool_backward(r, x, **kw), v)) < 1e-7
    num = (np.sum(r * CF.max_pool(x + h * v, **kw)) - np.sum(r * CF.max_pool(x - h * v, **kw))) / (2 * h)
    assert abs(num - np.vdot(CF.max_pool_backward(r, x, **kw), v)) < 1e-7


@pytest.mark.parametrize("kernel, size", [(2, (8, 8)), (2, (9, 7)), (3, (9, 10)), ((2, 3), (6, 9)), ((1, 2), (3, 4))])
def test_max_pool_backward_of_tiling_windows_matches_torch(kernel, size, rng):
    """Windows that tile the plane (stride = kernel) take their own kernel: ties go to the first maximum,
    a NaN takes the gradient, rows and columns past the last window get zero, as in PyTorch."""
    x = rng.integers(-2, 3, size=(3, 4, *size)).astype(np.float64)  # many ties
    x[0, 0, 0, 1] = np.nan
    x[1, 2, -1, -1] = np.nan  # possibly outside every window
    x[2, 3, :3, :3] = -np.inf
    y = CF.max_pool(x, kernel)
    gy = rng.standard_normal(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.max_pool2d(xt, kernel)
    yt.backward(torch.tensor(gy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(CF.max_pool_backward(gy, x, kernel), xt.grad.numpy())
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(CF.max_pool_backward(gy.astype(np.float32), x32, kernel),
                                  xt.grad.numpy().astype(np.float32))


@pytest.mark.parametrize("kernel, stride", [(2, 2), (2, 1)])  # tiling windows, and the general kernel
def test_max_pool_backward_sends_each_gradient_to_the_returned_index(kernel, stride, rng):
    """With several NaN (or tied maxima) in a window, the gradient goes to the first, the index
    ``max_pool(..., return_indices=True)`` reports. (PyTorch picks the last NaN, in its index and its
    backward alike: with NaN in a window the two libraries differ by design, each consistent with itself.)"""
    x = rng.integers(-1, 2, size=(2, 3, 6, 7)).astype(np.float64)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = x[0, 0, 1, 1] = np.nan
    x[1, 2, 2:4, 2:4] = np.nan
    y, idx = CF.max_pool(x, kernel, stride, return_indices=True)
    gy = rng.standard_normal(y.shape)
    expected = np.zeros(x.shape).reshape(2, 3, -1)
    for b, c in np.ndindex(2, 3):
        np.add.at(expected[b, c], idx[b, c].ravel(), gy[b, c].ravel())
    # Overlapping windows add their gradients in another order: the last bit may differ.
    np.testing.assert_allclose(CF.max_pool_backward(gy, x, kernel, stride), expected.reshape(x.shape),
                               rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("shape, padding", [((2, 0, 6), 1), ((0, 3, 6), 1), ((2, 0, 5, 4), 0), ((2, 3, 0), 1),
                                            ((2, 3, 0, 4), 1)])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooling_inputs_without_elements(shape, padding, pool):
    """No channels, no images, or an empty spatial axis (padded, so that windows exist): the output has the shape
    of the reference's, and the backward returns an empty gradient of the input's shape (max pooling's once
    failed on an internal reshape with no channels)."""
    x = np.zeros(shape)
    kw = dict(kernel_size=(2,) * (len(shape) - 2), padding=padding)
    forward, backward = getattr(CF, f"{pool}_pool"), getattr(CF, f"{pool}_pool_backward")
    y = forward(x, **kw)
    expected = getattr(ref, f"{pool}_pool")(x, kw["kernel_size"], kw["kernel_size"], ((padding, padding),) *
                                            (len(shape) - 2), (1,) * (len(shape) - 2), False,
                                            *(() if pool == "max" else (True,)))
    np.testing.assert_array_equal(y, expected)
    gx = backward(np.ones(y.shape), x, **kw)
    assert gx.shape == x.shape and gx.dtype == x.dtype


def test_windows_wholly_in_the_padding():
    """Padding past half the kernel (which PyTorch refuses): a window with no input gives -inf for the maximum
    and 0 for the average without ``count_include_pad`` (the mean of nothing, not 0 / 0), and no gradient."""
    x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    y = CF.max_pool(x, 2, padding=2)
    assert y.shape == (1, 1, 4, 4) and np.isneginf(y[0, 0, 0]).all() and np.isneginf(y[0, 0, :, 3]).all()
    assert y[0, 0, 1:3, 1:3].tolist() == [[6.0, 8.0], [14.0, 16.0]]
    a = CF.avg_pool(x, 2, padding=2, count_include_pad=False)
    assert a[0, 0, 0].tolist() == [0.0] * 4 and a[0, 0, 1:3, 1:3].tolist() == [[3.5, 5.5], [11.5, 13.5]]
    g = CF.avg_pool_backward(np.ones_like(a), x, 2, padding=2, count_include_pad=False)
    np.testing.assert_array_equal(g, np.full_like(x, 0.25))
    np.testing.assert_array_equal(CF.max_pool_backward(np.ones_like(y), x, 2, padding=2),
                                  np.array([[[[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]]]], float))
