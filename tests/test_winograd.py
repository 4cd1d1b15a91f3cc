"""Winograd F(4x4, 3x3): within its documented error bound, exact in float64, chosen where it should be."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import convlayer
import convlayer.functional as CF
from convlayer.engine import winograd
from convlayer.engine.gemm import force_strategy, strategy
from convlayer.engine.windows import make_plan

import reference as ref
from helpers import max_rel_err


def _torch_conv_and_grads(x, w, gy, pads, groups):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    (lo_h, hi_h), (lo_w, hi_w) = pads
    y = F.conv2d(F.pad(xt, (lo_w, hi_w, lo_h, hi_h)), wt, groups=groups)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _bound(x, w, pads, groups, dtype):
    """The documented bound: (C + 18) * growth * eps * sum |x||w| per output (module doc of winograd)."""
    magnitude = ref.conv(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, (1, 1), pads,
                         (1, 1), groups, ("zeros", "zeros"))
    c_g = x.shape[1] // groups
    return (c_g + 18) * winograd.WINOGRAD_GROWTH * np.finfo(dtype).eps * magnitude


shapes = st.tuples(
    st.integers(1, 3),  # batch
    st.integers(1, 3),  # groups
    st.integers(1, 6),  # channels per group
    st.integers(1, 6),  # outputs per group
    st.integers(1, 13), st.integers(1, 13),  # height, width
    st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3)),  # 3: beyond reach
)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_winograd_float64_matches_torch(shape, seed):
    """Forced Winograd, float64, every size (not only multiples of the tile), padding and group count; the input
    gradient with padding beyond the kernel's reach takes the exact path."""
    n, groups, c_g, k_g, h, w_, pad_h, pad_w = shape
    if h + sum(pad_h) < 3 or w_ + sum(pad_w) < 3:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, groups * c_g, h, w_))
    w = rng.standard_normal((groups * k_g, c_g, 3, 3))
    pads = (pad_h, pad_w)
    with force_strategy("winograd"):
        y = CF.conv(x, w, padding=pads, groups=groups)
        gy = rng.standard_normal(y.shape)
        gx, gw, _ = CF.conv_backward(gy, x, w, padding=pads, groups=groups)
    ty, tgx, tgw = _torch_conv_and_grads(x, w, gy, pads, groups)
    assert max_rel_err(y, ty) < 1e-12
    assert max_rel_err(gx, tgx) < 1e-12
    assert max_rel_err(gw, tgw) < 1e-12


@pytest.mark.parametrize("n, c, k, size, pads", [
    (2, 64, 32, (23, 30), ((1, 1), (1, 1))),
    (1, 128, 16, (16, 16), ((0, 2), (2, 0))),
    (3, 5, 7, (9, 4), ((2, 2), (0, 0))),
])
def test_winograd_float32_within_documented_bound(n, c, k, size, pads, rng):
    x = rng.standard_normal((n, c, *size)).astype(np.float32)
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    with force_strategy("winograd"):
        y = CF.conv(x, w, padding=pads)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        gx, _, _ = CF.conv_backward(gy, x, w, padding=pads, grads=("input",))
    exact = ref.conv(x.astype(np.float64), w.astype(np.float64), None, (1, 1), pads, (1, 1), 1, ("zeros",) * 2)
    assert np.all(np.abs(y - exact) <= _bound(x, w, pads, 1, np.float32))
    # the input gradient is the Winograd forward of gy with the flipped, transposed kernel, padding 2 - pad
    w_adj = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    adj_pads = tuple((2 - lo, 2 - hi) for lo, hi in pads)
    exact_gx = ref.conv(gy.astype(np.float64), w_adj.astype(np.float64), None, (1, 1), adj_pads, (1, 1), 1,
                        ("zeros",) * 2)
    assert np.all(np.abs(gx - exact_gx) <= _bound(gy, w_adj, adj_pads, 1, np.float32))


def test_winograd_runs_when_forced_and_only_where_it_applies():
    """The rules never pick Winograd (the implicit GEMM is as fast on the suite's 3x3 layers, and exact);
    forced, it takes the 3x3 stride-1 layers and nothing else."""
    plan = make_plan((58, 58), (3, 3), (1, 1), (1, 1), (56, 56))
    for c in (32, 64, 128):
        assert strategy(c, c, plan, "forward") == "implicit"
        assert strategy(c, c, plan, "grad_input") == "flipped"  # the forward of the flipped problem
        assert strategy(c, c, plan, "grad_input", flip=False) == "cols"
        assert strategy(c, c, plan, "grad_weight") == "implicit"
    assert strategy(4, 4, plan, "forward") == "planes"  # grouped: their own kernels
    assert strategy(4, 4, plan, "grad_weight") == "direct"
    with force_strategy("winograd"):
        assert all(strategy(64, 64, plan, p) == "winograd" for p in ("forward", "grad_input", "grad_weight"))
    strided = make_plan((57, 57), (3, 3), (2, 2), (1, 1), (28, 28))
    dilated = make_plan((60, 60), (3, 3), (1, 1), (2, 2), (56, 56))
    five = make_plan((60, 60), (5, 5), (1, 1), (1, 1), (56, 56))
    volume = make_plan((10, 10, 10), (3, 3, 3), (1, 1, 1), (1, 1, 1), (8, 8, 8))
    for other in (strided, dilated, five, volume):
        with force_strategy("winograd"):  # forcing it where it does not apply falls back to the rules
            assert strategy(64, 64, other, "grad_input") != "winograd"


def test_winograd_never_exceeds_the_workspace_limit():
    """Chunks are whole images: where one image's transforms would not fit, Winograd is not used at all."""
    plan = make_plan((58, 58), (3, 3), (1, 1), (1, 1), (56, 56))
    old = convlayer.get_workspace_limit()
    try:
        convlayer.set_workspace_limit(winograd.bytes_per_image(64, 64, (56, 56), 8) - 1)
        with force_strategy("winograd"):
            assert strategy(64, 64, plan, "grad_weight") != "winograd"
    finally:
        convlayer.set_workspace_limit(old)
    with force_strategy("winograd"):
        assert strategy(64, 64, plan, "grad_weight") == "winograd"


def test_winograd_workspace_chunks_give_the_same_result(rng):
    """Chunked by the workspace limit, the same convolution. Not bit for bit: OpenBLAS picks its kernel by the
    matrices' sizes (on Zen 3, a chunk of two images' tiles sums in another order than five: 2e-6 apart, each
    4e-6 from float64); a chunk's tiles put in the wrong place would be off by the size of the values."""
    x = rng.standard_normal((5, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    with force_strategy("winograd"):
        y = CF.conv(x, w, padding=1)
        old = convlayer.get_workspace_limit()
        try:
            convlayer.set_workspace_limit(winograd.bytes_per_image(16, 16, (12, 12), 8) + 1)  # two images a chunk
            assert max_rel_err(CF.conv(x, w, padding=1), y) < 1e-5
        finally:
            convlayer.set_workspace_limit(old)


@pytest.mark.parametrize("where", ["input", "weight"])
def test_winograd_leaves_inf_and_nan_to_the_exact_path(where, rng):
    """A transform would spread inf/NaN over a whole tile; such data takes the patch-matrix path."""
    x = rng.standard_normal((1, 16, 10, 10))
    w = rng.standard_normal((16, 16, 3, 3))
    if where == "input":
        x[0, 3, 4, 4] = np.inf
    else:
        w[2, 3, 1, 1] = np.nan
    with np.errstate(invalid="ignore"):
        y = CF.conv(x, w, padding=1)
        ty = F.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(ty))
    np.testing.assert_allclose(y[np.isfinite(y)], ty[np.isfinite(ty)], rtol=1e-12)



def test_winograd_weight_gradient_float32_within_documented_bound(rng):
    """The weight gradient sums over every tile of the batch: (tiles + 18) * growth * eps * sum |gy||x|."""
    n, c, k, size, pads = 2, 24, 20, (17, 22), ((1, 1), (0, 2))
    x = rng.standard_normal((n, c, *size)).astype(np.float32)
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    with force_strategy("winograd"):
        gy = rng.standard_normal(CF.conv(x, w, padding=pads).shape).astype(np.float32)
        _, gw, _ = CF.conv_backward(gy, x, w, padding=pads, grads=("weight",))
    _, exact, _ = CF.conv_backward(gy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), padding=pads,
                                   grads=("weight",))
    _, magnitude, _ = CF.conv_backward(np.abs(gy).astype(np.float64), np.abs(x).astype(np.float64),
                                       w.astype(np.float64), padding=pads, grads=("weight",))
    tiles = n * winograd.tiles_per_image(gy.shape[2:])
    bound = (tiles + 18) * winograd.WINOGRAD_GROWTH * np.finfo(np.float32).eps * magnitude
    assert np.all(np.abs(gw - exact) <= bound)
    assert max_rel_err(gw, exact) > 0  # float32 Winograd did run (float64 would be exact to 1e-15)
