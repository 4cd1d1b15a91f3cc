"""Convolution and transposed convolution: PyTorch (float64) and the naive reference as oracles."""

import contextlib
import math

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convlayer.functional as CF
from convlayer import geometry as G
from convlayer.engine.gemm import STRATEGIES, force_strategy

import reference as ref
from helpers import TORCH_MODE, assert_within_bound, max_rel_err, torch_pad_arg

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
ALL_MODES = ("zeros", "reflect", "symmetric", "circular", "replicate")


@st.composite
def conv_case(draw, max_rank=3, modes=("zeros", "reflect", "replicate", "circular"), torch_pads=True):
    rank = draw(st.integers(1, max_rank))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    kg = draw(st.integers(1, 5))  # 4 and 5: the direct forward's block of four outputs, with and without a rest
    n = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(rank))
    mode = draw(st.sampled_from(modes))
    size = []
    for k, d, (lo, hi) in zip(kernel, dilation, pads):
        low = max(1, d * (k - 1) + 1 - lo - hi)
        if torch_pads and mode == "reflect":
            low = max(low, lo + 1, hi + 1)
        if torch_pads and mode == "circular":
            low = max(low, lo, hi)
        size.append(draw(st.integers(low, low + 5)))
    bias = draw(st.booleans())
    return dict(rank=rank, groups=groups, c=cg * groups, k=kg * groups, n=n, kernel=kernel, stride=stride,
                dilation=dilation, pads=pads, mode=mode, size=tuple(size), bias=bias)


def _arrays(case, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["n"], case["c"], *case["size"])).astype(dtype)
    w = rng.standard_normal((case["k"], case["c"] // case["groups"], *case["kernel"])).astype(dtype)
    b = rng.standard_normal(case["k"]).astype(dtype) if case["bias"] else None
    return rng, x, w, b


def _kwargs(case):
    return dict(stride=case["stride"], padding=case["pads"], dilation=case["dilation"], groups=case["groups"],
                padding_mode=case["mode"])


@settings(max_examples=300)
@given(case=conv_case(), seed=st.integers(0, 2**31 - 1), how=st.sampled_from(STRATEGIES))
def test_conv_matches_torch_forward_and_gradients(case, seed, how):
    """Every engine strategy (forced) on every configuration."""
    with force_strategy(how):
        _check_conv_against_torch(case, seed)


@settings(max_examples=150)
@given(case=conv_case(modes=("zeros",)), seed=st.integers(0, 2**31 - 1), how=st.sampled_from(STRATEGIES),
       value=st.floats(-4, 4).filter(bool))
def test_conv_padding_value_matches_torch(case, seed, how, value):
    """Constant padding of another value than 0 (``padding_value``): PyTorch pads explicitly
    (``F.pad(value=...)``), then convolves without padding; every strategy, forced."""
    with force_strategy(how):
        _check_conv_against_torch(case, seed, value)


def _check_conv_against_torch(case, seed, value=0.0):
    rng, x, w, b = _arrays(case, seed)
    kw = _kwargs(case)
    if value:
        kw["padding_value"] = value
    y = CF.conv(x, w, b, **kw)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if b is not None else None
    xpad = F.pad(xt, torch_pad_arg(case["pads"]), mode=TORCH_MODE[case["mode"]], **({"value": value} if value else {}))
    yt = TORCH_CONV[case["rank"]](xpad, wt, bt, stride=case["stride"], dilation=case["dilation"],
                                  groups=case["groups"])
    assert y.shape == tuple(yt.shape)
    assert max_rel_err(y, yt.detach().numpy()) < 1e-12
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gx, gw, gb = CF.conv_backward(gy, x, w, b, **kw)
    assert max_rel_err(gx, xt.grad.numpy()) < 1e-12
    assert max_rel_err(gw, wt.grad.numpy()) < 1e-12
    if b is None:
        assert gb is None
    else:
        _assert_bias_grad(gb, gy)


@st.composite
def transposed_case(draw):
    rank = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(rank))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    for i in range(rank):
        out = (size[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1 + output_padding[i]
        assume(out >= 1)
    return dict(rank=rank, groups=groups, cin=cin, cout=cout_g * groups, kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, output_padding=output_padding, size=size,
                n=draw(st.integers(1, 2)), bias=draw(st.booleans()))


def _assert_bias_grad(gb, gy):
    """The bias gradient, a sum of ``gy`` per channel, within the dot product's rounding bound of the exact sum
    (``math.fsum``). Not PyTorch's: with cancellation (650 terms summing to -0.0062 of 499 in absolute value)
    its own sum was 1.2e-14 from the exact one, ours 2.6e-15, and a relative comparison of the two failed."""
    per_channel = np.moveaxis(gy, 1, 0).reshape(gy.shape[1], -1)
    exact = np.array([math.fsum(row) for row in per_channel])
    assert_within_bound(gb, exact, np.abs(per_channel).sum(axis=1), per_channel.shape[1])


@settings(max_examples=200)
@given(case=transposed_case(), seed=st.integers(0, 2**31 - 1))
def test_conv_transpose_matches_torch(case, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["n"], case["cin"], *case["size"]))
    w = rng.standard_normal((case["cin"], case["cout"] // case["groups"], *case["kernel"]))
    b = rng.standard_normal(case["cout"]) if case["bias"] else None
    kw = dict(stride=case["stride"], padding=case["padding"], output_padding=case["output_padding"],
              dilation=case["dilation"], groups=case["groups"])
    y = CF.conv_transpose(x, w, b, **kw)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if b is not None else None
    yt = TORCH_CONVT[case["rank"]](xt, wt, bt, **kw)
    assert y.shape == tuple(yt.shape)
    assert max_rel_err(y, yt.detach().numpy()) < 1e-12
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gx, gw, gb = CF.conv_transpose_backward(gy, x, w, b, **kw)
    assert max_rel_err(gx, xt.grad.numpy()) < 1e-12
    assert max_rel_err(gw, wt.grad.numpy()) < 1e-12
    if b is not None:
        _assert_bias_grad(gb, gy)


# --- beyond PyTorch: the float64 reference ----------------------------------------------------


@settings(max_examples=120)
@given(case=conv_case(max_rank=4, modes=ALL_MODES, torch_pads=False), seed=st.integers(0, 2**31 - 1),
       per_axis=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_conv_matches_reference_all_modes_4d_float32(case, seed, per_axis, dtype):
    """Symmetric mode, per-axis modes, pads larger than the input, 4-D, float32 under the error bound."""
    rng, x, w, b = _arrays(case, seed, dtype)
    modes = tuple(rng.choice(ALL_MODES) for _ in range(case["rank"])) if per_axis else (case["mode"],) * case["rank"]
    kw = _kwargs(case)
    kw["padding_mode"] = modes
    y = CF.conv(x, w, b, **kw)
    assert y.dtype == dtype
    expected = ref.conv(x, w, b, case["stride"], case["pads"], case["dilation"], case["groups"], modes)
    magnitude = ref.conv(np.abs(x), np.abs(w), None if b is None else np.abs(b), case["stride"], case["pads"],
                         case["dilation"], case["groups"], modes)
    terms = w[0].size + 1
    assert_within_bound(y, expected, magnitude, terms, dtype)


@settings(max_examples=80)
@given(case=conv_case(max_rank=3, modes=ALL_MODES, torch_pads=False), seed=st.integers(0, 2**31 - 1))
def test_conv_transpose_with_padding_modes_matches_reference(case, seed):
    """Transposed conv with every padding mode is the adjoint of the padded conv (scatter reference)."""
    rng = np.random.default_rng(seed)
    in_sizes = case["size"]
    modes = (case["mode"],) * case["rank"]
    out = G.conv_output_size(in_sizes, case["kernel"], case["stride"], case["pads"], case["dilation"])
    x = rng.standard_normal((case["n"], case["k"], *out))
    w = rng.standard_normal((case["k"], case["c"] // case["groups"], *case["kernel"]))
    y = CF.conv_transpose(x, w, None, stride=case["stride"], padding=case["pads"], dilation=case["dilation"],
                          groups=case["groups"], padding_mode=case["mode"], output_size=in_sizes)
    expected = ref.conv_transpose(x, w, None, case["stride"], case["pads"], case["dilation"], case["groups"],
                                  modes, in_sizes)
    assert y.shape == expected.shape
    assert max_rel_err(y, expected) < 1e-12


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize(
    "geom",
    [
        dict(kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding="same", groups=1),
        dict(kernel=(3, 2), stride=(2, 3), dilation=(2, 1), padding=((2, 1), (0, 3)), groups=2),
        dict(kernel=(5,), stride=(2,), dilation=(3,), padding="causal", groups=4),
        dict(kernel=(2, 2, 3), stride=(2, 1, 2), dilation=(1, 2, 1), padding="full", groups=1),
        dict(kernel=(3, 3), stride=(3, 2), dilation=(1, 1), padding=((7, 9), (8, 6)), groups=1),
    ],
)
def test_adjoint_identity(mode, geom, rng):
    """<conv(x, w), y> == <x, conv_transpose(y, w)> for every padding mode."""
    rank = len(geom["kernel"])
    c, k = 4, 8
    size = (7, 6, 5)[:rank] if rank > 1 else (11,)
    x = rng.standard_normal((2, c, *size))
    w = rng.standard_normal((k, c // geom["groups"], *geom["kernel"]))
    kw = dict(stride=geom["stride"], padding=geom["padding"], dilation=geom["dilation"], groups=geom["groups"],
              padding_mode=mode)
    y = CF.conv(x, w, **kw)
    v = rng.standard_normal(y.shape)
    xt = CF.conv_transpose(v, w, output_size=size, **kw)
    assert xt.shape == x.shape
    lhs, rhs = np.vdot(y, v), np.vdot(x, xt)
    assert abs(lhs - rhs) <= 1e-10 * (abs(lhs) + 1.0)


def _numeric_directional(f, x, v, h=1e-6):
    return (np.sum(f(x + h * v)) - np.sum(f(x - h * v))) / (2 * h)


@settings(max_examples=80)
@given(case=conv_case(max_rank=3, modes=ALL_MODES, torch_pads=False), seed=st.integers(0, 2**31 - 1),
       value=st.floats(-4, 4).filter(bool))
def test_conv_padding_value_per_axis_modes_matches_reference(case, seed, value):
    """``padding_value`` fills the ``"zeros"`` axes' padding, beside other modes on the other axes (the corners
    as ``numpy.pad`` makes them, axis by axis); the gradients against the reference's on the padded input."""
    rng, x, w, b = _arrays(case, seed)
    modes = ("zeros",) + tuple(rng.choice(ALL_MODES) for _ in range(case["rank"] - 1))
    modes = tuple(rng.permutation(modes))
    kw = {**_kwargs(case), "padding_mode": modes, "padding_value": value}
    y = CF.conv(x, w, b, **kw)
    expected = ref.conv(x, w, b, case["stride"], case["pads"], case["dilation"], case["groups"], modes, value)
    assert max_rel_err(y, expected) < 1e-12
    gy = rng.standard_normal(y.shape)
    gx, gw, _ = CF.conv_backward(gy, x, w, b, **kw)
    xp = ref.pad(x, case["pads"], modes, value)
    # On the padded input without padding, the weight gradient is the reference's; the input gradient is that of
    # the padding's linear part (the value only adds a constant), folded back by the reference's adjoint.
    valid = dict(stride=case["stride"], padding=0, dilation=case["dilation"], groups=case["groups"])
    gxp, gw_p, _ = CF.conv_backward(gy, xp, w, b, **valid)
    assert max_rel_err(gw, gw_p) < 1e-12
    assert max_rel_err(gx, ref.pad_adjoint(gxp, x.shape, case["pads"], modes)) < 1e-12


@pytest.mark.parametrize("mode", ALL_MODES)
def test_finite_differences_conv(mode, rng):
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 1), padding=((2, 1), (1, 3)), dilation=(1, 2), groups=2, padding_mode=mode)
    y = CF.conv(x, w, b, **kw)
    r = rng.standard_normal(y.shape)  # loss = sum(r * y)
    gx, gw, gb = CF.conv_backward(r, x, w, b, **kw)
    for arr, grad, f in (
        (x, gx, lambda a: r * CF.conv(a, w, b, **kw)),
        (w, gw, lambda a: r * CF.conv(x, a, b, **kw)),
        (b, gb, lambda a: r * CF.conv(x, w, a, **kw)),
    ):
        v = rng.standard_normal(arr.shape)
        num = _numeric_directional(f, arr, v)
        assert abs(num - np.vdot(grad, v)) <= 1e-6 * (1 + abs(num))


def test_finite_differences_conv_transpose(rng):
    x = rng.standard_normal((2, 4, 3, 4))
    w = rng.standard_normal((4, 3, 3, 3))
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, padding_mode="reflect")
    y = CF.conv_transpose(x, w, **kw)
    r = rng.standard_normal(y.shape)
    gx, gw, _ = CF.conv_transpose_backward(r, x, w, **kw)
    for arr, grad, f in ((x, gx, lambda a: r * CF.conv_transpose(a, w, **kw)),
                         (w, gw, lambda a: r * CF.conv_transpose(x, a, **kw))):
        v = rng.standard_normal(arr.shape)
        num = _numeric_directional(f, arr, v)
        assert abs(num - np.vdot(grad, v)) <= 1e-6 * (1 + abs(num))


def test_same_padding_with_stride_and_dilation(rng):
    for size, k, s, d in [(10, 3, 2, 1), (11, 4, 3, 2), (7, 5, 4, 3), (5, 2, 7, 1)]:
        x = rng.standard_normal((1, 2, size))
        w = rng.standard_normal((3, 2, k))
        for pad in ("same", "same_lower"):
            y = CF.conv(x, w, stride=s, dilation=d, padding=pad)
            assert y.shape[-1] == -(-size // s)
            (pp,) = G.resolve_padding(pad, (size,), (k,), (s,), (d,))
            np.testing.assert_allclose(y, ref.conv(x, w, None, (s,), (pp,), (d,), 1, ("zeros",)), rtol=1e-12, atol=1e-12)


def test_causal_output_sees_only_past(rng):
    x = rng.standard_normal((1, 1, 20))
    w = rng.standard_normal((1, 1, 4))
    y = CF.conv(x, w, padding="causal", dilation=2)
    x2 = x.copy()
    x2[..., 12:] = 99.0
    y2 = CF.conv(x2, w, padding="causal", dilation=2)
    assert y.shape == x.shape
    np.testing.assert_array_equal(y[..., :12], y2[..., :12])
    assert not np.allclose(y[..., 12:], y2[..., 12:])


def test_conv_transpose_same_and_output_size(rng):
    x = rng.standard_normal((1, 3, 5, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    assert CF.conv_transpose(x, w, stride=2, padding="same").shape == (1, 2, 10, 12)
    assert CF.conv_transpose(x, w, stride=2, padding=1, output_size=(10, 11)).shape == (1, 2, 10, 11)


def test_channels_last_and_unbatched(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    y = CF.conv(x, w, b, padding=1, stride=2)
    y_cl = CF.conv(np.moveaxis(x, 1, -1), w, b, padding=1, stride=2, data_format="channels_last")
    np.testing.assert_allclose(np.moveaxis(y_cl, -1, 1), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(CF.conv(x[1], w, b, padding=1, stride=2), y[1], rtol=1e-13, atol=1e-13)
    gy = rng.standard_normal(y.shape)
    gx, gw, gb = CF.conv_backward(gy, x, w, b, padding=1, stride=2)
    gx_cl, gw_cl, gb_cl = CF.conv_backward(np.moveaxis(gy, 1, -1), np.moveaxis(x, 1, -1), w, b, padding=1, stride=2,
                                           data_format="channels_last")
    np.testing.assert_allclose(np.moveaxis(gx_cl, -1, 1), gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw_cl, gw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb_cl, gb, rtol=1e-12, atol=1e-12)


def test_depthwise_and_separable(rng):
    x = rng.standard_normal((2, 4, 9, 8))
    dw = rng.standard_normal((8, 1, 3, 3))  # multiplier 2
    pw = rng.standard_normal((5, 8, 1, 1))
    b = rng.standard_normal(5)
    y = CF.separable_conv(x, dw, pw, b, stride=2, padding="same", padding_mode="reflect")
    mid = ref.conv(x, dw, None, (2, 2), G.resolve_padding("same", (9, 8), (3, 3), (2, 2)), (1, 1), 4, ("reflect",) * 2)
    expected = ref.conv(mid, pw, b, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, ("zeros",) * 2)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # Gradients against torch.
    xt = torch.tensor(x, requires_grad=True)
    dwt = torch.tensor(dw, requires_grad=True)
    pwt = torch.tensor(pw, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    (lo0, hi0), (lo1, hi1) = G.resolve_padding("same", (9, 8), (3, 3), (2, 2))
    mt = F.conv2d(F.pad(xt, [lo1, hi1, lo0, hi0], mode="reflect"), dwt, stride=2, groups=4)
    yt = F.conv2d(mt, pwt, bt)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gx, gdw, gpw, gb = CF.separable_conv_backward(gy, x, dw, pw, b, stride=2, padding="same", padding_mode="reflect")
    for a, t in ((gx, xt), (gdw, dwt), (gpw, pwt), (gb, bt)):
        assert max_rel_err(a, t.grad.numpy()) < 1e-12
    yd = CF.depthwise_conv(x, dw, padding=1)
    gxd, gwd, _ = CF.depthwise_conv_backward(rng.standard_normal(yd.shape), x, dw, padding=1)
    assert yd.shape == (2, 8, 9, 8) and gxd.shape == x.shape and gwd.shape == dw.shape


@pytest.mark.parametrize("size, kernel, stride, dilation, padding, multiplier", [
    ((9, 8), (3, 3), 1, 1, 1, 1),  # MobileNet's depthwise 3x3
    ((11, 10), (3, 3), 2, 1, 1, 3),  # strided, three outputs per channel
    ((12, 9), (3, 3), 1, 2, ((2, 0), (1, 3)), 2),  # dilated, asymmetric padding
    ((40,), (9,), 1, 1, 4, 1),  # nine taps in 1-D
    ((30, 37), (3, 3), 1, 1, 1, 1),  # rows of 37 computed 64 wide, into the next row, except the last ones
    ((23, 70), (3, 3), 2, 1, 1, 2),  # strided rows of 35 computed 64 wide
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_depthwise_nine_tap_forward(size, kernel, stride, dilation, padding, multiplier, dtype, rng):
    """The direct kernels' one-pass forward of nine-tap depthwise layers, straight into the output rows (each
    computed a whole number of vector blocks wide, spilling into rows written later, wherever the plane and the
    output have room); NaN and inf where they belong."""
    c = 5
    x = rng.standard_normal((3, c, *size)).astype(dtype)
    x[(1, 2, *(0,) * len(size))] = np.nan
    x[(2, 4, *(n // 2 for n in size))] = np.inf
    w = rng.standard_normal((c * multiplier, 1, *kernel)).astype(dtype)
    rank = len(size)
    kw = dict(stride=stride, dilation=dilation, groups=c)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"),
                             G.normalize_tuple(dilation, rank, "d"))
    with force_strategy("direct"):
        y = CF.conv(x, w, padding=padding, **kw)
    expected = TORCH_CONV[rank](F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)),
                                torch.tensor(w.astype(np.float64)), **kw).numpy()
    assert y.dtype == dtype
    _assert_same_with_nonfinite(y, expected, 1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("how", (None, *STRATEGIES))
def test_zero_size_batch_and_channels(how, rng):
    """Empty batches and channel axes, with the rules and with every strategy forced (Winograd's tiles once
    divided by the number of output channels)."""
    w = rng.standard_normal((4, 3, 3, 3))
    with force_strategy(how) if how else contextlib.nullcontext():
        y = CF.conv(np.zeros((0, 3, 5, 5)), w, padding=1)
        gx, gw, _ = CF.conv_backward(np.zeros((0, 4, 5, 5)), np.zeros((0, 3, 5, 5)), w, padding=1)
        y0 = CF.conv(np.zeros((2, 0, 5, 5)), np.zeros((4, 0, 3, 3)), bias=np.ones(4))
        gx0, gw0, _ = CF.conv_backward(np.ones((2, 4, 3, 3)), np.zeros((2, 0, 5, 5)), np.zeros((4, 0, 3, 3)))
        y1 = CF.conv(np.zeros((2, 3, 5, 5)), np.zeros((0, 3, 3, 3)), padding=2)
        gx1, gw1, _ = CF.conv_backward(np.zeros((2, 0, 7, 7)), np.ones((2, 3, 5, 5)), np.zeros((0, 3, 3, 3)),
                                       padding=2)
    assert y.shape == (0, 4, 5, 5)
    assert gx.shape == (0, 3, 5, 5) and np.array_equal(gw, np.zeros_like(w))
    assert y0.shape == (2, 4, 3, 3) and np.all(y0 == 1.0)
    assert gx0.shape == (2, 0, 5, 5) and gw0.shape == (4, 0, 3, 3)
    assert y1.shape == (2, 0, 7, 7)
    assert np.array_equal(gx1, np.zeros((2, 3, 5, 5))) and gw1.shape == (0, 3, 3, 3)


def _reference_grad_weight(gy, x, kernel, pads):
    """``gw[k, c, m] = sum_{n, o} gy[n, k, o] * xpad[n, c, o + m]`` (stride and dilation 1, one group), every
    product formed, so that ``0 * inf`` is NaN as in the arithmetic."""
    xp = ref.pad(x, pads, ("zeros",) * len(kernel))
    out = gy.shape[2:]
    gw = np.zeros((gy.shape[1], x.shape[1], *kernel))
    for m in np.ndindex(*kernel):
        window = tuple(slice(mi, mi + o) for mi, o in zip(m, out))
        gw[(..., *m)] = np.einsum("nko,nco->kc", gy.reshape(*gy.shape[:2], -1),
                                  xp[(slice(None), slice(None), *window)].reshape(*x.shape[:2], -1))
    return gw


@pytest.mark.parametrize("how", (None, *STRATEGIES))
@pytest.mark.parametrize("size, kernel, pads", [((0,), (3,), ((2, 2),)), ((0,), (1,), ((0, 2),)),
                                                ((0, 5), (3, 3), ((2, 1), (1, 1))),
                                                ((4, 0), (1, 3), ((0, 0), (2, 1)))])
def test_empty_spatial_axis_zero_padded(how, size, kernel, pads, rng):
    """An input with an empty spatial axis, zero-padded, has outputs: every term of every output and of the
    weight gradient meets a padding zero, so they are zero, NaN where the weights (forward) or the output
    gradient (weight gradient) hold inf or NaN, as in the reference; the input gradient is empty. With 64 input
    channels the rules take the patch-row kernels, which once divided by the empty plane's size
    (ZeroDivisionError in the weight gradient)."""
    x = np.zeros((3, 64, *size))
    w = rng.standard_normal((16, 64, *kernel))
    w[1, 5, (0,) * len(kernel)] = np.inf
    w[7, 0, (-1,) * len(kernel)] = np.nan
    with force_strategy(how) if how else contextlib.nullcontext():
        y = CF.conv(x, w, padding=pads)
        gy = rng.standard_normal(y.shape)
        gy[2, 3, (0,) * len(size)] = -np.inf
        gx, gw, _ = CF.conv_backward(gy, x, w, padding=pads)
    np.testing.assert_array_equal(y, ref.conv(x, w, None, (1,) * len(size), pads, (1,) * len(size), 1,
                                              ("zeros",) * len(size)))
    assert np.isnan(y[:, [1, 7]]).all() and not y[:, 0].any()
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, _reference_grad_weight(gy, x, kernel, pads))
    assert np.isnan(gw[3]).all() and not gw[:3].any()


def _torch_grads(gy, x, w, **kw):
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    F.conv2d(xt, wt, **kw).backward(torch.tensor(gy))
    return xt.grad.numpy(), wt.grad.numpy()


@pytest.mark.parametrize("how", STRATEGIES)
def test_nan_and_inf_propagate_as_in_ieee_arithmetic(how, rng):
    """Non-finite values reach exactly the outputs and gradients they reach in PyTorch, no more."""
    with force_strategy(how):
        _check_nan_inf(rng)


def _check_nan_inf(rng):
    x = rng.standard_normal((1, 1, 8, 8))
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 7, 7] = np.inf
    w = rng.standard_normal((1, 1, 3, 3))
    for kw in (dict(stride=1), dict(stride=2), dict(stride=1, padding=2)):
        y = CF.conv(x, w, **kw)
        np.testing.assert_allclose(y, F.conv2d(torch.tensor(x), torch.tensor(w), **kw).numpy(), rtol=1e-12)
        gy = rng.standard_normal(y.shape)
        gx, gw, _ = CF.conv_backward(gy, x, w, **kw)
        tgx, tgw = _torch_grads(gy, x, w, **kw)
        np.testing.assert_allclose(gw, tgw, rtol=1e-12)
        w_inf = w.copy()
        w_inf[0, 0, 1, 1] = np.inf
        xf = rng.standard_normal(x.shape)
        with np.errstate(invalid="ignore"):  # inf * 0 in the GEMM is expected here
            gx, _, _ = CF.conv_backward(gy, xf, w_inf, **kw)
        tgx, _ = _torch_grads(gy, xf, w_inf, **kw)
        np.testing.assert_allclose(gx, tgx, rtol=1e-12)
        assert np.isfinite(gx).sum() == np.isfinite(tgx).sum()


@pytest.mark.parametrize("how", ["direct", "lanes", "implicit", None])
@pytest.mark.parametrize("rank, stride, dilation, padding", [(1, 1, 8, (8, 0)), (1, 5, 1, 0), (1, 2, 3, 4), (2, 1, 1, 1),
                                                              (2, 2, 1, 0)])
def test_weight_gradients_keep_inf_and_nan_where_pytorch_has_them(how, rank, stride, dilation, padding, rng):
    """The inputs' inf and NaN reach exactly the weight-gradient entries they reach in PyTorch. 1-D lattices drop
    no positions, so there the direct kernels skip the check for them; in 2-D, inputs at the start of a row meet
    the positions dropped at the end of the row before (0 * inf), so the direct kernels check, and the implicit
    GEMM's steps skip those positions (it runs on such inputs too)."""
    size = (60,) if rank == 1 else (9, 10)
    x = rng.standard_normal((17, 4, *size))
    x[(3, 1) + (7,) * (rank == 1) + (4, 0) * (rank == 2)] = np.inf
    x[(5, 2) + (30,) * (rank == 1) + (6, 0) * (rank == 2)] = np.nan
    w = rng.standard_normal((6, 4) + (3,) * rank)
    lo, hi = padding if isinstance(padding, tuple) else (padding, padding)
    kw = dict(stride=stride, dilation=dilation, padding=((lo, hi),) * rank)
    y = CF.conv(x, w, **kw)
    gy = rng.standard_normal(y.shape)
    with force_strategy(how) if how else contextlib.nullcontext():
        _, gw, _ = CF.conv_backward(gy, x, w, **kw, grads=("weight",))
    wt = torch.tensor(w, requires_grad=True)
    TORCH_CONV[rank](F.pad(torch.tensor(x), (lo, hi) * rank), wt, stride=stride, dilation=dilation).backward(
        torch.tensor(gy))
    expected = wt.grad.numpy()
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(gw), np.isinf(expected))
    finite = np.isfinite(expected)
    assert finite.any() and not finite.all()
    assert max_rel_err(gw[finite], expected[finite]) < 1e-12


@pytest.mark.parametrize("how", STRATEGIES)
@pytest.mark.parametrize(
    "groups, stride, dilation, padding, dtype",
    [(1, 1, 1, 1, np.float64), (2, 2, 1, "same", np.float64), (1, (1, 2), (2, 1), ((0, 2), (1, 1)), np.float32)],
)
def test_many_channel_path_matches_torch(groups, stride, dilation, padding, dtype, how, rng):
    """Many channels per group, as real layers have, under every engine strategy."""
    with force_strategy(how):
        _check_many_channels(groups, stride, dilation, padding, dtype, rng)


def _check_many_channels(groups, stride, dilation, padding, dtype, rng):
    c, k = 32 * groups, 24 * groups
    x = rng.standard_normal((3, c, 9, 10)).astype(dtype)
    w = rng.standard_normal((k, c // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    kw = dict(stride=stride, dilation=dilation, groups=groups)
    (pads) = G.resolve_padding(padding, (9, 10), (3, 3), G.normalize_tuple(stride, 2, "s"),
                               G.normalize_tuple(dilation, 2, "d"))
    y = CF.conv(x, w, b, padding=padding, **kw)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    yt = F.conv2d(F.pad(xt, torch_pad_arg(pads)), wt, torch.tensor(b.astype(np.float64)), **kw)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert y.dtype == dtype
    assert max_rel_err(y, yt.detach().numpy()) < tol
    gy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(gy.astype(np.float64)))
    gx, gw, _ = CF.conv_backward(gy, x, w, b, padding=padding, **kw)
    assert max_rel_err(gx, xt.grad.numpy()) < tol
    assert max_rel_err(gw, wt.grad.numpy()) < tol


def _pointwise_tile_calls(monkeypatch, max_inner: int, fewer: bool) -> list:
    """With the 1x1 tile's rule set (``POINTWISE_MAX_INNER``, ``POINTWISE_FEWER_OUTPUTS``; 0 and False: never):
    the list that gets an entry per call of ``implicit.forward_pointwise``."""
    from convlayer.engine import implicit

    monkeypatch.setattr(implicit, "POINTWISE_MAX_INNER", max_inner)
    monkeypatch.setattr(implicit, "POINTWISE_FEWER_OUTPUTS", fewer)
    calls = []
    monkeypatch.setattr(implicit, "forward_pointwise",
                        lambda *a, f=implicit.forward_pointwise: calls.append(1) or f(*a))
    return calls


@pytest.mark.parametrize("c, k, groups, size", [(48, 16, 1, (11, 9)), (24, 24, 2, (5, 7)), (40, 12, 4, (20, 13)),
                                                (16, 48, 1, (11, 9)), (32, 16, 2, (20, 21))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("max_inner, fewer", [(0, True), (16, True), (16, False), (0, False)])
def test_pointwise_forward_from_the_input_as_it_lies(c, k, groups, size, dtype, max_inner, fewer, rng, monkeypatch):
    """The 1x1 forward with at most ``POINTWISE_MAX_INNER`` inputs per group, or (``POINTWISE_FEWER_OUTPUTS``,
    AVX-512's default) at most as many outputs as inputs, on the implicit GEMM's tile, reading ``x`` as it lies
    (the rule set here), over the positions whole tiles cover, the rest (99 and 260 positions; 35, fewer than a
    float32 tile) by BLAS; else one GEMM per image. With whole tiles' rows of output channels (16 and 8 per group)
    the tiles are stored in the output itself, over one block of positions or several (420: 384 of them in two
    blocks in float32)."""
    from convlayer.engine import implicit

    calls = _pointwise_tile_calls(monkeypatch, max_inner, fewer)
    monkeypatch.setattr(implicit, "POINTWISE_BLOCKS", False)  # blocks of 192; the grown ones in the test after
    x = rng.standard_normal((3, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, 1, 1)).astype(dtype)
    with force_strategy("taps"):
        y = CF.conv(x, w, groups=groups)
    assert bool(calls) == (c // groups <= max_inner or (fewer and k <= c))
    expected = F.conv2d(torch.tensor(x.astype(np.float64)), torch.tensor(w.astype(np.float64)), groups=groups)
    assert y.dtype == dtype
    assert max_rel_err(y, expected.numpy()) < (1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("inner, dtype, block", [(64, np.float32, 768), (256, np.float32, 192),
                                                 (144, np.float32, 336), (24, np.float32, 768),
                                                 (144, np.float64, 336), (300, np.float64, 192)])
def test_pointwise_jobs_take_more_positions_with_fewer_inputs(inner, dtype, block, monkeypatch):
    """With ``POINTWISE_BLOCKS`` (AVX-512's default) a 1x1 tile job with fewer than ``BLOCK_ROWS`` inputs takes
    as many more positions as keep its block of the input as large, whole tiles, up to ``POINTWISE_MAX_BLOCK``
    (the figures here are whole tiles of 12, 24 and 48 positions alike)."""
    from convlayer.engine import implicit

    monkeypatch.setattr(implicit, "POINTWISE_BLOCKS", True)
    assert implicit._pointwise_block(inner, dtype) == block
    monkeypatch.setattr(implicit, "POINTWISE_BLOCKS", False)
    assert implicit._pointwise_block(inner, dtype) == implicit.BLOCK_POSITIONS


@pytest.mark.parametrize("c, k, groups", [(16, 24, 1), (48, 40, 2), (8, 8, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_grown_jobs_give_the_same_outputs(c, k, groups, dtype, rng, monkeypatch):
    """The 1x1 tile with jobs grown for few inputs (here 768 positions a job: two whole jobs of an image's 1640
    positions, a partial one, and the positions past the whole tiles by BLAS), forward and input gradient: the
    same outputs, bitwise, as with jobs of ``BLOCK_POSITIONS``, and within rounding of the float64 reference."""
    from convlayer.engine import implicit

    calls = _pointwise_tile_calls(monkeypatch, 64, True)
    blocks = []
    monkeypatch.setattr(implicit, "_pointwise_block", lambda *a, f=implicit._pointwise_block: blocks.append(f(*a))
                        or blocks[-1])
    x = rng.standard_normal((2, c, 40, 41)).astype(dtype)
    w = rng.standard_normal((k, c // groups, 1, 1)).astype(dtype)
    gy = rng.standard_normal((2, k, 40, 41)).astype(dtype)
    out = {}
    for grown in (True, False):
        monkeypatch.setattr(implicit, "POINTWISE_BLOCKS", grown)
        with force_strategy("taps"):
            out[grown] = CF.conv(x, w, groups=groups), CF.conv_backward(gy, x, w, groups=groups, grads=("input",))[0]
    assert len(calls) == 4 and max(blocks[:2]) > implicit.BLOCK_POSITIONS
    assert 1640 > 2 * max(blocks[:2])  # several jobs per image, the last partial
    assert all(np.array_equal(a, b) for a, b in zip(out[True], out[False]))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    x64, w64 = torch.tensor(x.astype(np.float64)), torch.tensor(w.astype(np.float64))
    assert max_rel_err(out[True][0], F.conv2d(x64, w64, groups=groups).numpy()) < tol
    gx = torch.nn.grad.conv2d_input(x.shape, w64, torch.tensor(gy.astype(np.float64)), groups=groups)
    assert max_rel_err(out[True][1], gx.numpy()) < tol


@pytest.mark.parametrize("c, k, groups, size", [(48, 16, 1, (11, 9)), (16, 48, 1, (11, 9)), (40, 12, 4, (20, 13)),
                                                (12, 40, 4, (5, 7)), (24, 24, 2, (20, 21))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("max_inner, fewer", [(0, True), (64, True), (16, False), (0, False)])
def test_pointwise_input_gradient_as_a_forward_of_the_transposed_weights(c, k, groups, size, dtype, max_inner,
                                                                         fewer, rng, monkeypatch):
    """The 1x1 input gradient ``w^T gy`` per group on the forward's tile (the layer's K_g inputs, its C_g
    outputs) where :func:`gemm._pointwise_tile` picks it: at most ``POINTWISE_MAX_INNER`` inputs of that product,
    or (``POINTWISE_FEWER_OUTPUTS``) at most as many outputs as inputs (``C_g <= K_g``); else one GEMM per image.
    inf and NaN in the gradient spread to the same positions as in the float64 reference."""
    calls = _pointwise_tile_calls(monkeypatch, max_inner, fewer)
    x = rng.standard_normal((3, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, 1, 1)).astype(dtype)
    gy = rng.standard_normal((3, k, *size)).astype(dtype)
    gy[1, 0, 2, 3], gy[2, -1, -1, -1] = np.inf, np.nan
    with force_strategy("taps"):
        gx, _, _ = CF.conv_backward(gy, x, w, groups=groups, grads=("input",))
    assert bool(calls) == (k // groups <= max_inner or (fewer and c <= k))
    g = gy.astype(np.float64).reshape(3, groups, k // groups, -1)
    expected = np.einsum("gkc,ngkp->ngcp", w.astype(np.float64).reshape(groups, k // groups, -1), g).reshape(x.shape)
    assert gx.dtype == dtype and gx.shape == x.shape
    assert np.array_equal(np.isnan(gx), np.isnan(expected)) and np.array_equal(np.isinf(gx), np.isinf(expected))
    finite = np.isfinite(expected)
    assert finite.sum() > gx.size // 2
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert max_rel_err(np.where(finite, gx, 0), np.where(finite, expected, 0)) < tol


@pytest.mark.parametrize("c, k, groups", [(48, 16, 1), (16, 48, 1), (24, 24, 1), (48, 16, 2), (16, 48, 2),
                                          (10, 14, 2)])
@pytest.mark.parametrize("max_channels", [None, 12, 0])
def test_pointwise_weight_gradient_both_orientations(c, k, groups, max_channels, rng, monkeypatch):
    """The 1x1 weight gradient as per-image products, ``gy[b] @ x[b]^T`` or, with more input than output
    channels per group, ``x[b] @ gy[b]^T`` transposed back; or as dot products along the positions (the rule
    set here: with ``DOT_POINTWISE_MAX_CHANNELS`` None, AVX-512's default, on every layer; with 12, on those
    with at most 12 channels per group on one side; with 0, on none), in blocks of 21 positions (whole vectors
    and a masked tail), with padded rows and outputs (5 and 7 channels per group)."""
    from convlayer.engine import implicit

    monkeypatch.setattr(implicit, "DOT_POINTWISE_MAX_CHANNELS", max_channels)
    monkeypatch.setattr(implicit, "DOT_POSITIONS", 21)
    x = rng.standard_normal((5, c, 6, 7))
    w = rng.standard_normal((k, c // groups, 1, 1))
    gy = rng.standard_normal((5, k, 6, 7))
    _, tgw = _torch_grads(gy, x, w, groups=groups)
    calls = []
    monkeypatch.setattr(implicit, "grad_weight_rows", lambda *a, f=implicit.grad_weight_rows: calls.append(1) or f(*a))
    with force_strategy("taps"):
        _, gw, _ = CF.conv_backward(gy, x, w, groups=groups, grads=("weight",))
    assert bool(calls) == (max_channels is None or min(c, k) // groups <= max_channels)
    assert max_rel_err(gw, tgw) < 1e-12


@pytest.mark.parametrize("shape, avx512, avx2", [
    ((144, 24), (True, True, True), (False, True, True)),  # MobileNet's pointwise layer, the suite's
    ((48, 288), (True, True, True), (True, False, True)),
    ((24, 144), (True, True, True), (True, False, True)),
    ((256, 64), (True, True, True), (False, False, False)),  # ResNet's 1x1 layer, the suite's
    ((64, 256), (True, True, True), (False, False, False)),
], ids=["144-24", "48-288", "24-144", "256-64", "64-256"])
def test_pointwise_rules_per_register_width(shape, avx512, avx2):
    """The default rules for 1x1 layers (forward on the tile, input gradient on the tile, weight gradient by dot
    products) on this machine's vector width: with AVX-512 all three on every layer here (the tile for at most
    64 inputs or at most as many outputs as inputs); with AVX2, the tile for at most 48 inputs of the product,
    the dot products for at most 48 channels on one side (Zen 3's measurements, in :mod:`.implicit`)."""
    from convlayer.engine import gemm, implicit

    c, k = shape
    expected = avx512 if implicit.VECTOR_BYTES == 64 else avx2
    assert (gemm._pointwise_tile(c, k), gemm._pointwise_tile(k, c), gemm._dot_pointwise(c, k)) == expected


def test_workspace_limit_bounds_memory_and_keeps_results(rng):
    """Chunking the batch (small workspace limit) gives the same numbers; a patch matrix that would not fit
    even for one image is never built (the planner switches to per-tap GEMMs)."""
    import convlayer
    from convlayer.engine.gemm import strategy
    from convlayer.engine.windows import make_plan

    x = rng.standard_normal((6, 8, 6, 7, 5))
    w = rng.standard_normal((8, 8, 3, 3, 3))
    kw = dict(stride=(1, 2, 1), padding=1, padding_mode="reflect")
    y = CF.conv(x, w, **kw)
    gy = rng.standard_normal(y.shape)
    grads = CF.conv_backward(gy, x, w, **kw)
    old = convlayer.get_workspace_limit()
    try:
        convlayer.set_workspace_limit(20_000)
        for how in ("cols", "implicit"):
            with force_strategy(how):
                np.testing.assert_allclose(CF.conv(x, w, **kw), y, rtol=1e-12, atol=1e-12)
                gx, gw, gb = CF.conv_backward(gy, x, w, **kw)
                assert gb is None
                np.testing.assert_allclose(gx, grads[0], rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(gw, grads[1], rtol=1e-12, atol=1e-12)
    finally:
        convlayer.set_workspace_limit(old)
    big = make_plan((130, 130, 130), (3, 3, 3), (1, 1, 1), (1, 1, 1), (128, 128, 128))
    small = make_plan((12, 12), (5, 5), (1, 1), (1, 1), (8, 8))
    assert strategy(32, 32, small, "grad_input", flip=False) == "cols"
    assert strategy(16, 8, big, "grad_input", flip=False) == "taps"
    # The implicit GEMM never builds a patch matrix: its work array is the padded input, chunked per image.
    assert strategy(8, 8, big) == "implicit"


def test_connection_conv_equals_dense_conv_with_zeroed_weights(rng):
    from convlayer.models import C3_TABLE

    table = [list(t) for t in C3_TABLE]
    x = rng.standard_normal((3, 6, 14, 14))
    w = rng.standard_normal((60, 5, 5))
    dense = np.zeros((16, 6, 5, 5))
    rows = [(j, i) for j, t in enumerate(table) for i in t]
    for r, (j, i) in enumerate(rows):
        dense[j, i] = w[r]
    b = rng.standard_normal(16)
    np.testing.assert_allclose(CF.connection_conv(x, w, table, b), CF.conv(x, dense, b), rtol=1e-12, atol=1e-12)
    gy = rng.standard_normal((3, 16, 10, 10))
    gx, gw, gb = CF.connection_conv_backward(gy, x, w, table, b)
    dgx, dgw, dgb = CF.conv_backward(gy, x, dense, b)
    np.testing.assert_allclose(gx, dgx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, np.array([dgw[j, i] for j, i in rows]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, dgb, rtol=1e-12)
    with pytest.raises(ValueError, match="weight has 59 rows but the table lists 60 connections"):
        CF.connection_conv(x, w[:59], table)



@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size, kernel", [((5, 5), (5, 5)), ((7,), (7,)), ((2, 3, 4), (2, 3, 4))])
def test_kernel_covering_the_input_is_a_dense_layer(groups, size, kernel, rng):
    """LeNet's C5 shape (one output per image): computed as one product on the input as it lies."""
    from convlayer.engine import gemm
    from convlayer.engine.windows import make_plan

    x = rng.standard_normal((9, 12 * groups, *size))
    w = rng.standard_normal((16 * groups, 12, *kernel))
    plan = make_plan(size, kernel, (1,) * len(size), (1,) * len(size), (1,) * len(size))
    assert gemm.strategy(12, 16, plan) == "cols" and gemm._dense(plan, ((0, 0),) * len(size))
    y = CF.conv(x, w, groups=groups)
    gy = rng.standard_normal(y.shape)
    gx, gw, _ = CF.conv_backward(gy, x, w, groups=groups)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = TORCH_CONV[len(size)](xt, wt, groups=groups)
    yt.backward(torch.tensor(gy))
    assert y.shape == tuple(yt.shape) and all(s == 1 for s in y.shape[2:])
    assert max_rel_err(y, yt.detach().numpy()) < 1e-12
    assert max_rel_err(gx, xt.grad.numpy()) < 1e-12
    assert max_rel_err(gw, wt.grad.numpy()) < 1e-12


@pytest.mark.parametrize(
    "size, kernel, groups, stride, dilation, padding",
    [((14, 14), (5, 5), 1, 1, 1, 0), ((9, 10), (3, 3), 2, (1, 2), (2, 1), ((0, 2), (1, 1))),
     ((30,), (4,), 3, 2, 1, "same"), ((5, 6, 4), (3, 2, 3), 1, 1, (1, 2, 1), 1)],
)
def test_lanes_kernels_cover_full_and_partial_blocks(size, kernel, groups, stride, dilation, padding, rng):
    """The lanes kernels put 16 images side by side: 37 images are two full blocks and one of 5."""
    from convlayer.engine import direct

    rank = len(size)
    x = rng.standard_normal((2 * direct.LANES + 5, 2 * groups, *size))
    w = rng.standard_normal((3 * groups, 2, *kernel))
    st_, di = G.normalize_tuple(stride, rank, "s"), G.normalize_tuple(dilation, rank, "d")
    pads = G.resolve_padding(padding, size, kernel, st_, di)
    kw = dict(stride=stride, dilation=dilation, groups=groups)
    with force_strategy("lanes"):
        y = CF.conv(x, w, padding=padding, **kw)
        gy = rng.standard_normal(y.shape)
        gx, gw, _ = CF.conv_backward(gy, x, w, padding=padding, **kw)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = TORCH_CONV[rank](F.pad(xt, torch_pad_arg(pads)), wt, stride=st_, dilation=di, groups=groups)
    yt.backward(torch.tensor(gy))
    assert max_rel_err(y, yt.detach().numpy()) < 1e-12
    assert max_rel_err(gx, xt.grad.numpy()) < 1e-12
    assert max_rel_err(gw, wt.grad.numpy()) < 1e-12


@pytest.mark.parametrize("how", ["direct", "lanes"])
@pytest.mark.parametrize("kernel, k_g", [((5, 5), 4), ((5, 5), 9), ((7, 7), 6), ((3, 3), 5), ((2, 2, 2), 7), ((4,), 8)])
def test_direct_kernels_block_outputs_and_taps(how, kernel, k_g, rng):
    """The direct forward does four outputs per pass (then the rest one by one), the weight gradient two; both
    take five taps per pass when the taps do not divide into threes (25, 49, 8), else three (9), then single
    taps (4, 49, 8). Every combination against PyTorch, in both kernels (17 images: one full lanes block
    and one of 1)."""
    rank = len(kernel)
    size = tuple(k + 3 for k in kernel)
    x = rng.standard_normal((17, 2 * 2, *size))
    w = rng.standard_normal((2 * k_g, 2, *kernel))
    with force_strategy(how):
        y = CF.conv(x, w, padding=1, groups=2)
        gy = rng.standard_normal(y.shape)
        gx, gw, _ = CF.conv_backward(gy, x, w, padding=1, groups=2)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = TORCH_CONV[rank](xt, wt, padding=1, groups=2)
    yt.backward(torch.tensor(gy))
    assert max_rel_err(y, yt.detach().numpy()) < 1e-12
    assert max_rel_err(gx, xt.grad.numpy()) < 1e-12
    assert max_rel_err(gw, wt.grad.numpy()) < 1e-12


def _assert_same_with_nonfinite(actual, expected, tol=1e-12):
    """NaN, +inf and -inf exactly where ``expected`` has them; elsewhere within ``tol`` (1e-12 for float64) of
    its largest finite magnitude, the measure the other comparisons here use (max_rel_err)."""
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(actual), test(expected))
    finite = np.isfinite(expected)
    assert max_rel_err(actual[finite], expected[finite]) < tol


def test_lanes_kernels_keep_nan_and_inf_in_their_own_images(rng):
    """A non-finite value in one image of a block reaches only that image's outputs (and the weight
    gradient), exactly as in PyTorch."""
    x = rng.standard_normal((20, 2, 8, 8))
    x[17, 1, 0, 0] = np.nan
    x[3, 0, 7, 7] = np.inf
    w = rng.standard_normal((3, 2, 3, 3))
    with force_strategy("lanes"):
        for kw in (dict(stride=1), dict(stride=2), dict(stride=1, padding=2)):
            y = CF.conv(x, w, **kw)
            _assert_same_with_nonfinite(y, F.conv2d(torch.tensor(x), torch.tensor(w), **kw).numpy())
            gy = rng.standard_normal(y.shape)
            _, gw, _ = CF.conv_backward(gy, x, w, **kw)
            _assert_same_with_nonfinite(gw, _torch_grads(gy, x, w, **kw)[1])
            w_inf = w.copy()
            w_inf[1, 0, 1, 1] = np.inf
            xf = rng.standard_normal(x.shape)
            gx, _, _ = CF.conv_backward(gy, xf, w_inf, **kw)
            _assert_same_with_nonfinite(gx, _torch_grads(gy, xf, w_inf, **kw)[0])


def test_planner_puts_small_planes_of_large_batches_in_lanes():
    from convlayer.engine import gemm, implicit
    from convlayer.engine.windows import make_plan

    c3 = make_plan((14, 14), (5, 5), (1, 1), (1, 1), (10, 10))  # LeNet's C3
    assert gemm.strategy(6, 16, c3, "grad_weight", n=64) == "lanes"
    assert gemm.strategy(6, 16, c3, "forward", n=64) == "implicit"  # more channels than the direct kernels'
    # from LANES_FORWARD_MIN_IMAGES images, with 256-bit vectors only (Zen 3's measurements)
    many = gemm.LANES_FORWARD_MIN_IMAGES
    assert gemm.strategy(6, 16, c3, "forward", n=many) == ("lanes" if implicit.VECTOR_BYTES == 32 else "implicit")
    assert gemm.strategy(6, 16, c3, "forward", n=many - 1) == "implicit"
    assert gemm.strategy(6, 16, c3, "grad_input", n=many) == "implicit"
    assert gemm.strategy(6, 16, c3, "grad_weight", n=gemm.LANES_MIN_IMAGES - 1) == "direct"
    large = make_plan((60, 60), (5, 5), (1, 1), (1, 1), (56, 56))  # depthwise 5x5, 56x56: planes too long
    assert gemm.strategy(1, 1, large, "grad_weight", n=64) == "direct"


def test_planner_puts_few_row_input_gradients_of_stride_1_on_the_direct_kernels_with_avx2():
    """With 256-bit vectors, the input gradients of stride-1 layers with at most 8 input channels per group and
    fewer than FEW_ROWS_DIRECT_GRAD_INPUT_ROWS patch rows run on the direct kernels (Zen 3's measurements);
    with AVX-512 they keep the implicit GEMM and the flipped forwards, and strided layers, 1x1 ones and those
    with more rows keep their rules on every CPU."""
    from convlayer.engine import gemm, implicit
    from convlayer.engine.windows import make_plan

    avx2 = implicit.VECTOR_BYTES == 32
    rgb = make_plan((226, 226), (3, 3), (1, 1), (1, 1), (224, 224))  # 27 rows
    assert gemm.strategy(3, 64, rgb, "grad_input", n=8) == ("direct" if avx2 else "implicit")
    audio = make_plan((16002,), (3,), (1,), (1,), (16000,))  # 1-D 8 -> 64, k=3: 24 rows
    assert gemm.strategy(8, 64, audio, "grad_input", n=8) == ("direct" if avx2 else "flipped")
    strided = make_plan((114, 114), (3, 3), (2, 2), (1, 1), (56, 56))
    assert gemm.strategy(3, 32, strided, "grad_input", n=16) == "implicit"
    stem = make_plan((230, 230), (7, 7), (2, 2), (1, 1), (112, 112))  # 147 rows
    assert gemm.strategy(3, 64, stem, "grad_input", n=8) == "implicit"
    video = make_plan((18, 58, 58), (3, 3, 3), (1, 1, 1), (1, 1, 1), (16, 56, 56))  # 81 rows
    assert gemm.strategy(3, 64, video, "grad_input", n=2) == "implicit"
    pointwise = make_plan((56, 56), (1, 1), (1, 1), (1, 1), (56, 56))
    assert gemm.strategy(8, 64, pointwise, "grad_input", n=8) != "direct"  # one tap


def test_plane_kernels_take_the_depthwise_and_grouped_3x3_layers():
    """The rule, on any CPU: depthwise 3x3 layers (2-D, stride 1 or 2, any dilation and batch): forwards,
    weight gradients, and the input gradients of stride 2 without a channel multiplier (stride 1's is a
    forward, flipped); the stride-1 forwards of groups of a few channels; forced where it does not apply, the
    planner's rules run instead."""
    from convlayer.engine import gemm
    from convlayer.engine.windows import make_plan

    same = make_plan((58, 58), (3, 3), (1, 1), (1, 1), (56, 56))
    dilated = make_plan((20, 20), (3, 3), (1, 1), (2, 2), (16, 16))
    strided = make_plan((57, 57), (3, 3), (2, 2), (1, 1), (28, 28))
    for plan, k_g, n in ((same, 1, 1), (dilated, 4, 64), (strided, 1, 8)):  # k_g: a channel multiplier
        assert gemm.strategy(1, k_g, plan, "forward", n=n) == "planes"
        assert gemm.strategy(1, k_g, plan, "grad_weight", n=n) == "planes"
    assert gemm.strategy(1, 1, same, "grad_input", n=8) == "flipped"  # a forward on the depthwise kernel
    assert gemm.strategy(1, 1, strided, "grad_input", n=8) == "planes"
    assert gemm.strategy(1, 2, strided, "grad_input", n=8) != "planes"  # a channel multiplier
    three = make_plan((58, 58), (3, 3), (3, 3), (1, 1), (19, 19))
    uneven = make_plan((58, 58), (3, 3), (1, 2), (1, 1), (56, 28))
    five = make_plan((60, 60), (5, 5), (1, 1), (1, 1), (56, 56))
    line = make_plan((58,), (3,), (1,), (1,), (56,))
    for plan, c_g in ((three, 1), (uneven, 1), (five, 1), (line, 1), (strided, 2)):
        for pass_ in ("forward", "grad_weight"):
            assert gemm.strategy(c_g, 1, plan, pass_, n=8) != "planes"
            with force_strategy("planes"):
                assert gemm.strategy(c_g, 1, plan, pass_, n=8) != "planes"
    # groups of a few channels (where the direct kernels would run): the stride-1 forward only
    assert gemm.strategy(4, 4, same, "forward", n=8) == "planes"  # ResNeXt's 4 x 4
    assert gemm.strategy(4, 4, same, "grad_input", n=8) == "flipped"  # a forward of 4 x 4 groups
    assert gemm.strategy(4, 4, same, "grad_weight", n=8) != "planes"
    assert gemm.strategy(8, 4, same, "forward", n=8) != "planes"  # more pairs than the direct kernels take
    with force_strategy("planes"):  # forced, on any CPU where it applies
        assert gemm.strategy(1, 1, same, "forward", n=8) == "planes"
        assert gemm.strategy(1, 1, same, "grad_input", n=8, flip=False) != "planes"
        assert gemm.strategy(1, 2, strided, "grad_input", n=8) != "planes"


@pytest.mark.parametrize(
    "size, padding, stride, dilation, multiplier",
    [
        ((9, 7), 1, 1, 1, 1),  # one partial vector per row
        ((5, 16), 1, 1, 1, 2),  # rows of exactly one 512-bit vector of float32, a channel multiplier
        ((6, 17), 0, 1, 1, 1),  # valid: 15 outputs per row
        ((7, 37), ((2, 0), (3, 1)), 1, 1, 1),  # uneven padding, rows spanning three vectors
        ((12, 40), 2, 1, 2, 1),  # dilated, "same"
        ((4, 3), 3, 1, 1, 1),  # padding beyond the kernel's reach: rows and columns of zeros only
        ((20, 56), 1, 1, 1, 3),  # MobileNet's row width
        ((13, 56), 1, 2, 1, 1),  # stride 2: 28 outputs per row, each vector two loads
        ((9, 71), ((0, 1), (2, 2)), 2, 2, 2),  # stride 2, dilated, uneven padding, odd width
        ((6, 5), 0, 2, 1, 1),  # stride 2 on a plane narrower than a vector
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_depthwise_kernels_match_torch_and_stay_in_their_planes(size, padding, stride, dilation, multiplier, dtype,
                                                                rng):
    """The depthwise kernels' forward and weight gradient, and the input gradient of the planner (flipped onto
    the forward kernel at stride 1), against PyTorch in float64: row widths across the vector width, padding
    on any side, strides, dilation, channel multipliers; the forward writes nothing past its output (a
    canary after it), and inf and NaN spread as in PyTorch."""
    from convlayer.engine import gemm, planes
    from convlayer.engine.windows import make_plan

    c = 3
    x = rng.standard_normal((2, c, *size)).astype(dtype)
    w = rng.standard_normal((c * multiplier, 1, 3, 3)).astype(dtype)
    x[1, 2].flat[5] = np.inf
    x[1, 0].flat[-1] = np.nan
    kw = dict(padding=padding, stride=stride, dilation=dilation, groups=c)
    pads = G.resolve_padding(padding, size, (3, 3), (stride, stride), (dilation, dilation))
    torch_kw = dict(stride=stride, dilation=dilation, groups=c)
    yt = F.conv2d(F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)), torch.tensor(w.astype(np.float64)),
                  **torch_kw)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    full = tuple(s + lo + hi for s, (lo, hi) in zip(size, pads))
    plan = make_plan(full, (3, 3), (stride, stride), (dilation, dilation), tuple(yt.shape[2:]))
    canary = np.full(yt.numel() + 64, -7.0, dtype=dtype)
    y = canary[:yt.numel()].reshape(yt.shape)
    gy = rng.standard_normal(yt.shape).astype(dtype)
    for parallel in (False, True):
        planes.forward(x, w, c, plan, pads, y, parallel)
        _assert_same_with_nonfinite(y, yt.numpy(), tol)
        assert (canary[yt.numel():] == -7.0).all()
        _assert_same_with_nonfinite(planes.grad_weight(gy, x, c, plan, pads, parallel),
                                    _torch_depthwise_grads(gy, x, w, pads, torch_kw)[1], tol)
    x_finite = np.nan_to_num(x, nan=0.0, posinf=0.0)
    gx, gw, _ = CF.conv_backward(gy, x_finite, w, **kw)
    gx_t, gw_t = _torch_depthwise_grads(gy, x_finite, w, pads, torch_kw)
    assert max_rel_err(gx, gx_t) < tol
    assert max_rel_err(gw, gw_t) < tol
    if multiplier == 1 and stride == 2:  # the input gradient's own kernel
        for parallel in (False, True):
            assert max_rel_err(planes.grad_input(gy, w, plan, pads, x.shape, parallel), gx_t) < tol
    # an infinite weight meets the padding's zeros (NaN, as in PyTorch); in the input gradient it meets only
    # the gradient (the planner leaves the depthwise kernel then: its vectors' zero lanes would meet it too)
    w_inf = w.copy()
    w_inf[0, 0, 0, 1] = np.inf  # taps at either column edge and the middle one
    w_inf[0, 0, 1, 0] = -np.inf
    w_inf[0, 0, 2, 2] = np.inf
    xt = torch.tensor(x_finite.astype(np.float64))
    _assert_same_with_nonfinite(planes.forward(x_finite, w_inf, c, plan, pads, np.empty_like(y), True),
                                F.conv2d(F.pad(xt, torch_pad_arg(pads)), torch.tensor(w_inf.astype(np.float64)),
                                         **torch_kw).numpy(), tol)
    gx, _, _ = CF.conv_backward(gy, x_finite, w_inf, **kw)
    _assert_same_with_nonfinite(gx, _torch_depthwise_grads(gy, x_finite, w_inf, pads, torch_kw)[0], tol)


@pytest.mark.parametrize("rows", [None, 2, 4])
@pytest.mark.parametrize("vector_bytes", [32, 64])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_plane_kernels_of_either_vector_width(vector_bytes, stride, rows, rng):
    """The plane kernels built for 256-bit (AVX2) and 512-bit vectors alike, whichever this machine runs:
    one plane's forward and weight gradient in float32 and float64 (4 to 16 lanes) against PyTorch, on rows
    shorter and longer than a vector, with padding and dilation; with the default output rows per pass
    (``plane_rows``) and with two and four, at either stride (13 rows: blocks of four, then a pair or a single
    row); rows whose vectors go first to last or, where the last passes the row's end (28 wide), last to
    first (``each_vector``); an output that ends before its input does (``cut``: the kernel's inner vectors,
    which test no edge, must still end with the output's rows). The default: four rows at stride 1, except the
    weight gradient's two with 256-bit vectors (16 registers); one at stride 2."""
    from numba import njit

    from convlayer.engine import planes

    assert planes.plane_rows(stride, vector_bytes) == (4 if stride == 1 else 1)
    weight_rows = 1 if stride == 2 else 4 if vector_bytes == 64 else 2
    assert planes.plane_rows(stride, vector_bytes, grad_weight=True) == weight_rows
    forward = planes.make_plane_kernel(3, 3, stride, stride, vector_bytes, rows=rows)
    backward = planes.make_plane_kernel(3, 3, stride, stride, vector_bytes, grad_weight=True, rows=rows)

    @njit
    def run(x, w, y, gy, gw, h, wd, ho, wo, pt, pl, d):
        forward(x, 0, h, wd, w, 0, y, 0, ho, wo, pt, pl, d, d)
        backward(x, 0, h, wd, gw, 0, gy, 0, ho, wo, pt, pl, d, d)

    for dtype in (np.float32, np.float64):
        for (h, wd), (pt, pl), d, cut in (((5, 3), (1, 1), 1, 0), ((9, 21), (2, 0), 2, 0), ((6, 40), (1, 2), 1, 0),
                                          ((13, 19), (1, 1), 1, 0), ((13, 28), (1, 1), 1, 0), ((9, 43), (1, 1), 1, 5)):
            x = rng.standard_normal((h, wd)).astype(dtype)
            w = rng.standard_normal(9).astype(dtype)
            xt = torch.tensor(x.astype(np.float64))[None, None]
            padded = F.pad(xt, (pl, 2 * d - pl + 1, pt, 2 * d - pt + 1))
            yt = F.conv2d(padded, torch.tensor(w.astype(np.float64)).reshape(1, 1, 3, 3), stride=stride, dilation=d)
            ho = (h + 2 * d - (2 * d + 1)) // stride + 1
            wo = (wd + 2 * d - (2 * d + 1)) // stride + 1 - cut  # cut: output columns left out on the right
            expected = yt[0, 0, :ho, :wo].numpy()
            gy = rng.standard_normal((ho, wo)).astype(dtype)
            wt = torch.tensor(w.astype(np.float64)).reshape(1, 1, 3, 3).requires_grad_()
            y = F.conv2d(padded, wt, stride=stride, dilation=d)[0, 0, :ho, :wo]
            y.backward(torch.tensor(gy.astype(np.float64)))
            y = np.full(ho * wo + 64, -7.0, dtype=dtype)
            gw = np.empty(9, dtype=dtype)
            run(x.ravel(), w, y, gy.ravel(), gw, h, wd, ho, wo, pt, pl, d)
            tol = 1e-12 if dtype == np.float64 else 1e-5
            assert max_rel_err(y[:ho * wo].reshape(ho, wo), expected) < tol
            assert (y[ho * wo:] == -7.0).all()
            assert max_rel_err(gw, wt.grad.numpy().ravel()) < tol


@pytest.mark.parametrize("vector_bytes", [32, 64])
def test_stride2_input_gradient_kernel_of_either_vector_width(vector_bytes, rng):
    """The stride-2 depthwise input gradient's kernel built for 256-bit and 512-bit vectors, in float32 and
    float64, against PyTorch: MobileNet's rows, no padding (taps left of a vector's first column), padding on
    the right beyond the kernel's reach (a gradient wider than half the input: its vectors inside their rows
    while the input's pass their end), dilation, and planes narrower than a vector; nothing written outside
    the plane (canaries on both sides)."""
    from numba import njit

    from convlayer.engine import planes

    kernel = planes.make_grad_input2_kernel(3, 3, vector_bytes)

    @njit
    def run(gy, w, gx, ho, wo, h, wd, pt, pl, d):
        kernel(gy, 0, ho, wo, w, 0, gx, 16, h, wd, pt, pl, d, d)

    for dtype in (np.float32, np.float64):
        for (h, wd), (pt, pb), (pl, pr), d in (((13, 56), (1, 1), (1, 1), 1), ((7, 40), (0, 0), (0, 0), 1),
                                               ((7, 36), (1, 1), (1, 14), 1), ((9, 71), (0, 1), (2, 2), 2),
                                               ((6, 5), (0, 0), (0, 0), 1)):
            w = rng.standard_normal(9).astype(dtype)
            xt = torch.zeros((1, 1, h, wd), dtype=torch.float64, requires_grad=True)
            yt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), torch.tensor(w.astype(np.float64)).reshape(1, 1, 3, 3),
                          stride=2, dilation=d)
            ho, wo = yt.shape[2:]
            gy = rng.standard_normal((ho, wo)).astype(dtype)
            yt.backward(torch.tensor(gy.astype(np.float64))[None, None])
            gx = np.full(h * wd + 32, -7.0, dtype=dtype)
            run(gy.ravel(), w, gx, ho, wo, h, wd, pt, pl, d)
            tol = 1e-12 if dtype == np.float64 else 1e-5
            assert max_rel_err(gx[16:16 + h * wd].reshape(h, wd), xt.grad.numpy()[0, 0]) < tol
            assert (gx[:16] == -7.0).all() and (gx[16 + h * wd:] == -7.0).all()


@pytest.mark.parametrize("vector_bytes", [32, 64])
def test_stride2_weight_gradient_keeps_each_tap_to_its_own_inputs(vector_bytes, rng):
    """The stride-2 kernels read a row's three taps from one pair of loads (the left tap is the right one's lanes
    moved on by one): each tap's weight gradient still meets only its own inputs. An inf in the last column that
    the last output reaches (its right tap) makes that tap's gradient inf and leaves the left tap's finite, as in
    PyTorch, on rows ending anywhere in a vector and with the padding on either side; and the forward agrees."""
    from numba import njit

    from convlayer.engine import planes

    forward = planes.make_plane_kernel(3, 3, 2, 2, vector_bytes)
    backward = planes.make_plane_kernel(3, 3, 2, 2, vector_bytes, grad_weight=True)

    @njit
    def run(x, w, y, gy, gw, h, wd, ho, wo, pt, pl):
        forward(x, 0, h, wd, w, 0, y, 0, ho, wo, pt, pl, 1, 1)
        backward(x, 0, h, wd, gw, 0, gy, 0, ho, wo, pt, pl, 1, 1)

    for dtype in (np.float32, np.float64):
        for wd in range(17, 42, 3):
            for pl, pr in ((1, 1), (0, 2), (2, 0)):
                h, pt = 7, 1
                wo = (wd + pl + pr - 3) // 2 + 1
                ho = (h + 2 - 3) // 2 + 1
                x = rng.standard_normal((h, wd)).astype(dtype)
                last = 2 * (wo - 1) + 2 - pl  # the last output's right tap
                if last < wd:
                    x[3, last] = np.inf
                w = rng.standard_normal(9).astype(dtype)
                gy = rng.standard_normal((ho, wo)).astype(dtype)
                xt = F.pad(torch.tensor(x.astype(np.float64))[None, None], (pl, pr, pt, 1))
                wt = torch.tensor(w.astype(np.float64)).reshape(1, 1, 3, 3).requires_grad_()
                yt = F.conv2d(xt, wt, stride=2)
                yt.backward(torch.tensor(gy.astype(np.float64))[None, None])
                y = np.full(ho * wo + 64, -7.0, dtype=dtype)
                gw = np.empty(9, dtype=dtype)
                run(x.ravel(), w, y, gy.ravel(), gw, h, wd, ho, wo, pt, pl)
                tol = 1e-12 if dtype == np.float64 else 1e-5
                _assert_same_with_nonfinite(gw, wt.grad.numpy().ravel(), tol)
                _assert_same_with_nonfinite(y[:ho * wo].reshape(ho, wo), yt.detach().numpy()[0, 0], tol)
                assert (y[ho * wo:] == -7.0).all()


@pytest.mark.parametrize(
    "c_g, k_g, size, padding, dilation",
    [
        (4, 4, (9, 21), 1, 1),  # ResNeXt's groups: one block of four outputs
        (2, 6, (7, 40), 2, 2),  # a block and two outputs alone, dilated: no row pairs
        (3, 1, (6, 17), ((0, 2), (1, 0)), 1),  # uneven padding, an odd number of output rows
        (16, 1, (5, 3), 3, 1),  # padding beyond the kernel's reach
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_plane_kernel_matches_torch(c_g, k_g, size, padding, dilation, dtype, rng):
    """The grouped stride-1 forward (and the input gradient flipped onto it) against PyTorch in float64: blocks
    of four outputs and outputs alone, row pairs and single rows, padding, dilation, inf and NaN in the input
    and in the weights (which meet the padding's zeros, as in PyTorch)."""
    from convlayer.engine import gemm, planes
    from convlayer.engine.windows import make_plan

    groups = 3
    x = rng.standard_normal((2, c_g * groups, *size)).astype(dtype)
    w = rng.standard_normal((k_g * groups, c_g, 3, 3)).astype(dtype)
    x[1, 0].flat[4] = np.inf
    x[0, -1].flat[-2] = np.nan
    w[-1, 0, 0, 0] = -np.inf
    kw = dict(padding=padding, dilation=dilation, groups=groups)
    pads = G.resolve_padding(padding, size, (3, 3), (1, 1), (dilation, dilation))
    torch_kw = dict(dilation=dilation, groups=groups)
    expected = F.conv2d(F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)),
                        torch.tensor(w.astype(np.float64)), **torch_kw).numpy()
    full = tuple(s + lo + hi for s, (lo, hi) in zip(size, pads))
    plan = make_plan(full, (3, 3), (1, 1), (dilation, dilation), expected.shape[2:])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    canary = np.full(expected.size + 64, -7.0, dtype=dtype)
    y = canary[:expected.size].reshape(expected.shape)
    for parallel in (False, True):
        planes.forward(x, w, groups, plan, pads, y, parallel)
        _assert_same_with_nonfinite(y, expected, tol)
        assert (canary[expected.size:] == -7.0).all()
    w_finite = np.nan_to_num(w, neginf=0.0)
    gy = rng.standard_normal(expected.shape).astype(dtype)
    gx, _, _ = CF.conv_backward(gy, x, w_finite, **kw)
    _assert_same_with_nonfinite(gx, _torch_depthwise_grads(gy, x, w_finite, pads, torch_kw)[0], tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grouped_kernel_weights_transformed_as_numpy_does(dtype, rng):
    """The grouped kernel's transformed weights (``planes.winograd_rows``, compiled) equal F(2, 3)'s ``G`` applied
    by NumPy's array operations in float64, bit for bit, infinite and NaN taps (inf - inf is NaN) and a strided
    view included."""
    from convlayer.engine import planes

    w = rng.standard_normal((6, 3, 3, 5)).astype(dtype)
    w[0, 0, 0, 0], w[0, 0, 2, 0] = np.inf, -np.inf
    w[1, 2, 1, 3] = np.nan
    w[2, 1, 0, 4] = np.inf
    for given in (w, w[:, :, :, ::2], np.asfortranarray(w)):
        got = planes.winograd_rows(given)
        assert got.dtype == dtype and got.shape == (6, 3, given.shape[3], 4)
        g = np.moveaxis(given.astype(np.float64), 2, 0)  # the three taps down the rows, in float64
        with np.errstate(invalid="ignore"):  # inf - inf is NaN
            outer = g[0] + g[2]
            expected = np.stack([g[0], (outer + g[1]) * 0.5, (outer - g[1]) * 0.5, g[2]], axis=-1)
        np.testing.assert_array_equal(got, expected.astype(dtype))


@pytest.mark.parametrize("vector_bytes", [32, 64])
@pytest.mark.parametrize("kb", [4, 1])
def test_grouped_winograd_rows_within_documented_bound(kb, vector_bytes, rng):
    """The grouped kernel's row pairs by F(2, 3), built for 256-bit (AVX2) and 512-bit vectors alike: float32
    within the documented bound of :mod:`convlayer.engine.planes` (``(3 C_g + 4) * 2 * eps * sum |x||w|``)
    of the float64 reference, float64 within 1e-12; rows shorter and longer than a vector, an odd number of
    output rows (the last one direct), padding on any side, dilated columns. Then finite inputs whose
    transform overflows (``d2 - d1`` past float32's largest) where the direct sums do not: those row pairs are
    computed again by the direct sums, finite and within the direct kernel's bound."""
    from numba import njit

    from convlayer.engine import planes

    kernel = planes.make_group_kernel(3, 3, kb, vector_bytes, winograd=True)

    @njit
    def run(x, c_g, h, wd, w, y, ho, wo, pt, pl, dw, wu):
        kernel(x, 0, h * wd, c_g, h, wd, w, 0, y, 0, ho * wo, ho, wo, pt, pl, 1, dw, wu, 0)

    for c_g, (h, wd), ((pt, pb), (pl, pr)), dw in ((4, (9, 21), ((1, 1), (1, 1)), 1),
                                                   (1, (6, 5), ((0, 2), (2, 0)), 1),
                                                   (7, (12, 40), ((2, 1), (0, 1)), 1),
                                                   (3, (8, 19), ((1, 1), (2, 2)), 2)):  # dilated columns
        ho, wo = h + pt + pb - 2, wd + pl + pr - 2 * dw
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal((c_g, h, wd)).astype(dtype)
            w = rng.standard_normal((kb, c_g, 3, 3)).astype(dtype)
            y = np.full(kb * ho * wo + 64, -7.0, dtype=dtype)
            run(x.ravel(), c_g, h, wd, w.ravel(), y, ho, wo, pt, pl, dw, planes.winograd_rows(w).ravel())
            args = (None, (1, 1), ((pt, pb), (pl, pr)), (1, dw), 1, ("zeros", "zeros"))
            exact = ref.conv(x[None].astype(np.float64), w.astype(np.float64), *args)[0]
            got = y[:kb * ho * wo].reshape(kb, ho, wo)
            assert (y[kb * ho * wo:] == -7.0).all()
            if dtype == np.float64:
                assert max_rel_err(got, exact) < 1e-12
                continue
            magnitude = ref.conv(np.abs(x[None]).astype(np.float64), np.abs(w).astype(np.float64), *args)[0]
            assert_within_bound(got, exact, magnitude, 3 * c_g + 4, np.float32, planes.WINOGRAD_ROWS_GROWTH)
            huge = x.copy()
            huge[:, 1::2] = np.float32(3e38)  # rows of alternate signs: d2 - d1 overflows in every pair
            huge[:, 0::2] = np.float32(-3e38)
            small = (w / 1e3).astype(np.float32)
            run(huge.ravel(), c_g, h, wd, small.ravel(), y, ho, wo, pt, pl, dw, planes.winograd_rows(small).ravel())
            exact = ref.conv(huge[None].astype(np.float64), small.astype(np.float64), *args)[0]
            magnitude = ref.conv(np.abs(huge[None]).astype(np.float64), np.abs(small).astype(np.float64), *args)[0]
            got = y[:kb * ho * wo].reshape(kb, ho, wo)
            assert np.isfinite(got).all()
            assert_within_bound(got, exact, magnitude, 9 * c_g, np.float32)


@pytest.mark.parametrize("how", ["planes", None])
def test_plane_kernels_take_empty_batches(how):
    """No images, or planes of one pixel, through the plane kernels (forced, and as the planner picks): every
    pass returns its shape, zeros for the weight gradient of no images."""
    for stride, groups, w_shape in ((1, 6, (6, 1, 3, 3)), (2, 6, (6, 1, 3, 3)), (1, 3, (6, 2, 3, 3))):
        w = np.ones(w_shape)
        kw = dict(padding=1, stride=stride, groups=groups)
        for x in (np.zeros((0, 6, 9, 9)), np.ones((2, 6, 1, 1))):
            with force_strategy(how) if how else contextlib.nullcontext():
                y = CF.conv(x, w, **kw)
                gx, gw, _ = CF.conv_backward(np.ones(y.shape), x, w, **kw)
            xt = torch.tensor(x, requires_grad=True)
            wt = torch.tensor(w, requires_grad=True)
            yt = F.conv2d(xt, wt, **kw)
            yt.backward(torch.ones(yt.shape, dtype=yt.dtype))
            np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-12)
            np.testing.assert_allclose(gx, xt.grad.numpy(), atol=1e-12)
            np.testing.assert_allclose(gw, wt.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("how", STRATEGIES)
@pytest.mark.parametrize("size, kernel, kw", [((5, 5), (1, 1), {}), ((40,), (3,), dict(padding=1)),
                                              ((14, 14), (5, 5), {}), ((9, 9), (3, 3), dict(stride=2, padding=1))])
def test_every_strategy_takes_an_empty_batch(how, size, kernel, kw):
    """No images under every strategy, forced (1x1 layers included, whose per-image products once failed to
    reshape an empty gy): the forward and the input gradient keep their shapes, the weight gradient is zero."""
    x = np.zeros((0, 8, *size), dtype=np.float32)
    w = np.ones((4, 8, *kernel), dtype=np.float32)
    with force_strategy(how):
        y = CF.conv(x, w, **kw)
        gx, gw, _ = CF.conv_backward(np.zeros(y.shape, dtype=np.float32), x, w, **kw)
    assert y.shape[:2] == (0, 4) and gx.shape == x.shape and gx.dtype == gw.dtype == np.float32
    assert gw.shape == w.shape and not gw.any()


def _torch_depthwise_grads(gy, x, w, pads, torch_kw):
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    F.conv2d(F.pad(xt, torch_pad_arg(pads)), wt, **torch_kw).backward(torch.tensor(gy.astype(np.float64)))
    return xt.grad.numpy(), wt.grad.numpy()


def test_planner_keeps_forwards_with_few_patch_rows_off_the_patch_matrix(monkeypatch):
    """Stems and one-channel inputs (fewer than IMPLICIT_MIN_ROWS patch rows): the direct kernels from
    FEW_ROWS_DIRECT_MIN_IMAGES images on planes of up to FEW_ROWS_DIRECT_MAX_LENGTH positions, the implicit
    GEMM for strided 1-D layers (with AVX-512, those with more than FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS rows) and
    with AVX2 for the 1-D ones with FEW_ROWS_IMPLICIT_1D_MIN_ROWS rows or more,
    the patch matrix otherwise; the weight gradients of layers with few input
    channels on the direct kernels on the same terms; the input gradients keep their own rules."""
    from convlayer.engine import gemm, implicit
    from convlayer.engine.windows import make_plan

    rgb = make_plan((226, 226), (3, 3), (1, 1), (1, 1), (224, 224))  # 3 -> 64: 27 rows
    few = gemm.FEW_ROWS_DIRECT_MIN_IMAGES
    assert 3 * rgb.n_taps < gemm.IMPLICIT_MIN_ROWS
    assert gemm.strategy(3, 64, rgb, "forward", n=few) == "direct"
    assert gemm.strategy(3, 64, rgb, "forward", n=few - 1) == "cols"
    side = math.isqrt(gemm.FEW_ROWS_DIRECT_MAX_LENGTH) + 1  # planes too large for a direct job
    huge = make_plan((side + 2, side + 2), (3, 3), (1, 1), (1, 1), (side, side))
    assert gemm.strategy(3, 64, huge, "forward", n=few) == "cols"
    stem = make_plan((16000,), (10,), (5,), (1,), (3199,))  # the 1-D stem, 10 rows
    assert gemm.strategy(1, 64, stem, "forward", n=1) == "implicit"
    one_d = make_plan((16002,), (3,), (1,), (1,), (16000,))
    avx2 = implicit.VECTOR_BYTES == 32
    # strided 1-D: with AVX-512 the direct kernels up to FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS rows, from `few` images
    for vector_bytes, expected in ((32, "implicit"), (64, "direct")):
        monkeypatch.setattr(implicit, "VECTOR_BYTES", vector_bytes)
        assert gemm.strategy(1, 64, stem, "forward", n=few) == expected
        assert gemm.strategy(1, 64, stem, "forward", n=few - 1) == "implicit"
        assert 2 * stem.n_taps > gemm.FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS
        assert gemm.strategy(2, 64, stem, "forward", n=few) == "implicit"  # 20 rows
    monkeypatch.undo()
    # 1-D, stride 1: with AVX2 the implicit GEMM from FEW_ROWS_IMPLICIT_1D_MIN_ROWS rows (24 here), else direct
    assert gemm.strategy(8, 64, one_d, "forward", n=8) == ("implicit" if avx2 else "direct")
    nine = make_plan((16008,), (9,), (1,), (1,), (16000,))  # one channel, 9 rows
    assert 9 < gemm.FEW_ROWS_IMPLICIT_1D_MIN_ROWS
    assert gemm.strategy(1, 64, nine, "forward", n=8) == "direct"
    # input gradients with few input channels: the implicit GEMM from IMPLICIT_GRAD_INPUT_MIN_ROWS rows (with
    # AVX2, those of stride-1 layers with fewer than FEW_ROWS_DIRECT_GRAD_INPUT_ROWS rows on the direct kernels)
    assert gemm.strategy(3, 64, rgb, "grad_input", n=few) == ("direct" if avx2 else "implicit")
    assert 8 * one_d.n_taps < gemm.IMPLICIT_GRAD_INPUT_MIN_ROWS <= 3 * rgb.n_taps
    assert gemm.strategy(8, 64, one_d, "grad_input", n=8, flip=False) == ("direct" if avx2 else "cols")
    assert gemm.strategy(1, 64, stem, "grad_input", n=8) == "cols"  # strided, 10 rows: on every CPU
    # weight gradients with few input channels: the direct kernels on the same terms, but the 1-D layers'
    # dot products
    threads = gemm.blas._threads()  # from an image per thread
    assert gemm.strategy(1, 64, stem, "grad_weight", n=threads) == "implicit"
    assert gemm.strategy(8, 64, one_d, "grad_weight", n=threads) == "implicit"
    assert gemm.strategy(3, 64, rgb, "grad_weight", n=threads) == "direct"
    if threads > 1:
        assert gemm.strategy(3, 64, rgb, "grad_weight", n=threads - 1) == "cols"
    assert gemm.strategy(3, 64, huge, "grad_weight", n=threads) == "cols"
    many = gemm.FEW_CHANNELS_DIRECT_GRAD_WEIGHT + 1
    assert gemm.strategy(many, 64, rgb, "grad_weight", n=threads) == "implicit"  # 81 patch rows
    speech = make_plan((161, 200), (41, 11), (2, 2), (1, 1), (61, 95))  # one channel, 451 patch rows
    assert 451 > gemm.FEW_CHANNELS_DIRECT_GRAD_WEIGHT_MAX_ROWS
    assert gemm.strategy(1, 32, speech, "grad_weight", n=threads) == "implicit"


@pytest.mark.parametrize("per_image", [True, False])
def test_patch_matrix_per_image_and_batch_folded_paths_agree_with_torch(per_image, rng, monkeypatch):
    """Large images take the per-image patch matrix (real outputs only, gy as it is) in all three passes,
    small ones the batch-folded one (dropped columns, masked for inf and NaN): the threshold is moved so
    that the same cases run through each."""
    from convlayer.engine import gemm

    monkeypatch.setattr(gemm, "PER_IMAGE_GEMM_MIN_OUTPUTS", 1 if per_image else 10 ** 9)
    calls = []
    for name in ("_grad_input_cols_per_image", "_grad_weight_cols_per_image"):
        fn = getattr(gemm, name)
        monkeypatch.setattr(gemm, name, lambda *a, _fn=fn, **k: calls.append(_fn) or _fn(*a, **k))
    with force_strategy("cols"):
        for args in [(1, 1, 1, 1, np.float64), (2, 2, 1, "same", np.float64),
                     (1, (1, 2), (2, 1), ((0, 2), (1, 1)), np.float32)]:
            _check_many_channels(*args, rng)
        with np.errstate(invalid="ignore"):
            _check_nan_inf(rng)
    assert bool(calls) == per_image


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", ["small", "large", "strided"])  # the compiled probe serial and threaded; NumPy's sum
def test_finiteness_check_finds_one_bad_element_anywhere(dtype, size):
    """The engine's choice of an exact path rests on this check: one inf or NaN anywhere, first, last or in
    between, must be seen; finite data must pass (on the compiled paths even when its sum would overflow)."""
    from convlayer.engine import gemm

    n = 1000 if size != "large" else gemm.FINITE_CHECK_MIN_SIZE * 3 + 7
    a = np.random.default_rng(0).standard_normal(2 * n if size == "strided" else n).astype(dtype)
    if size != "strided":
        a *= np.finfo(dtype).max / 8
    view = (lambda b: b[::2]) if size == "strided" else (lambda b: b)
    assert view(a).flags.c_contiguous == (size != "strided") and gemm._all_finite(view(a))
    for i in (0, n // 2, n - 1):
        for bad in (np.inf, -np.inf, np.nan):
            b = a.copy()
            view(b)[i] = bad
            assert not gemm._all_finite(view(b))


@pytest.mark.parametrize("how", STRATEGIES)
@pytest.mark.parametrize("width, padding", [(8, 0), (8, 1), (10, (0, 1)), (9, 1)])
def test_stride_two_rows_split_into_even_and_odd_columns(how, width, padding, rng):
    """Stride 2 along rows of even width: the fills read the plane split into its even and odd columns,
    and the gradients go back through the inverse split; the last column may lie beyond every window
    (width 8, no padding). Odd widths keep the plain strided copy."""
    from convlayer.engine import direct
    from convlayer.engine.windows import make_plan

    x = rng.standard_normal((17, 4, 6, width))
    w = rng.standard_normal((6, 2, 3, 3))
    kw = dict(stride=2, padding=padding, groups=2)
    pads = G.resolve_padding(padding, (6, width), (3, 3), (2, 2), (1, 1))
    with force_strategy(how):
        y = CF.conv(x, w, **kw)
        gy = rng.standard_normal(y.shape)
        gx, gw, _ = CF.conv_backward(gy, x, w, **kw)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.conv2d(F.pad(xt, torch_pad_arg(pads)), wt, stride=2, groups=2)
    yt.backward(torch.tensor(gy))
    assert max_rel_err(y, yt.detach().numpy()) < 1e-12
    assert max_rel_err(gx, xt.grad.numpy()) < 1e-12
    assert max_rel_err(gw, wt.grad.numpy()) < 1e-12
    full = (6 + pads[0][0] + pads[0][1], width + pads[1][0] + pads[1][1])
    plan = make_plan(full, (3, 3), (2, 2), (1, 1), y.shape[2:])
    step = direct.fill_arrays(plan, (6, width), pads)[3]
    assert (step == direct.SPLIT2) == (width % 2 == 0)
    assert direct.fill_arrays(plan, (6, width), pads, True)[3] == 2  # the lanes kernels' plain layout


# The implicit GEMM's block edges: (size, kernel, c, k, groups, stride, dilation, padding).
BLOCK_EDGE_CASES = [
    ((300,), (9,), 40, 20, 1, 1, 1, 4),  # 360 patch rows: two calls of BLOCK_ROWS; 300 positions: 3 blocks
    ((23, 41), (5, 3), 7, 9, 1, 2, (1, 2), ((2, 1), (0, 3))),  # 9 outputs: 8 + 1 (AVX-512) or 4 + 4 + 1 (AVX2)
    ((7, 9, 11), (3, 2, 3), 6, 12, 2, (1, 2, 1), 1, 1),  # 3-D, groups, 54 rows: blocks of 8 and a rest (AVX-512)
    ((50, 3), (41, 3), 1, 32, 1, 2, 1, 0),  # one input channel, many taps (the speech layer's shape)
    ((20, 21), (3, 3), 10, 128, 2, 1, 1, 1),  # 64 outputs per group: the weight gradient's wide tile, 45 rows
    ((50,), (3,), 6, 4, 2, 1, 20, ((30, 7),)),  # 1-D: each job's window starts and ends outside the input
    ((400,), (5,), 120, 8, 2, 1, 3, ((2, 9),)),  # 1-D, groups, 300 patch rows: two calls of BLOCK_ROWS
    ((700,), (2,), 12, 64, 1, 1, 4, ((4, 0),)),  # 1-D causal, whole vectors of outputs: nothing to zero
    # 1-D, whole blocks of output channels: tiles stored in the output itself, read from the input itself
    # between the first and last blocks; groups; 300 patch rows, the second call adding into the output
    ((900,), (3,), 96, 32, 2, 1, 2, ((3, 1),)),
    ((500,), (5,), 60, 16, 1, 1, 1, 2),
]


# Each case with the 1-D forwards' windows inside the input read where they lie (AVX-512's default); the 1-D
# cases also with every window copied (AVX2's): WINDOWS_IN_PLACE matters only there.
@pytest.mark.parametrize("size, kernel, c, k, groups, stride, dilation, padding, in_place",
                         [(*case, True) for case in BLOCK_EDGE_CASES]
                         + [(*case, False) for case in BLOCK_EDGE_CASES if len(case[0]) == 1])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_implicit_gemm_covers_every_block_edge(size, kernel, c, k, groups, stride, dilation, padding, dtype, in_place,
                                               rng, monkeypatch):
    """The implicit GEMM's blocks of rows, outputs and positions, full and partial, in all three passes; the 1-D
    forwards' windows inside the input read where they lie or copied (``WINDOWS_IN_PLACE``, either way here)."""
    from convlayer.engine import implicit

    monkeypatch.setattr(implicit, "WINDOWS_IN_PLACE", in_place)
    x = rng.standard_normal((3, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    with force_strategy("implicit"):
        y = CF.conv(x, w, **kw)
        gy = rng.standard_normal(y.shape).astype(dtype)
        gx, gw, _ = CF.conv_backward(gy, x, w, **kw)
    rank = len(size)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"),
                             G.normalize_tuple(dilation, rank, "d"))
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    yt = TORCH_CONV[rank](F.pad(xt, torch_pad_arg(pads)), wt, stride=stride, dilation=dilation, groups=groups)
    yt.backward(torch.tensor(gy.astype(np.float64)))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert y.dtype == gx.dtype == gw.dtype == dtype
    assert max_rel_err(y, yt.detach().numpy()) < tol
    assert max_rel_err(gx, xt.grad.numpy()) < tol
    assert max_rel_err(gw, wt.grad.numpy()) < tol


# The forward's windows of the padded planes (WINDOWS_ND): (n, size, kernel, c, k, groups, stride, dilation,
# padding).
WINDOW_CASES = [
    (2, (23, 41), (3, 3), 5, 9, 1, 1, 1, 1),  # each block's window spans rows, padding between them
    (1, (9, 7), (5, 3), 4, 6, 2, 1, (2, 1), ((3, 0), (1, 4))),  # groups, dilation, uneven padding; one image
    (1, (30, 30), (3, 3), 3, 4, 1, 1, 1, ((0, 2), (2, 0))),  # no padding before the rows: windows start inside
    (1, (5, 6, 7), (3, 2, 3), 4, 8, 1, 1, (1, 2, 1), ((1, 1), (0, 1), (2, 1))),  # 3-D, windows across planes
    (1, (40, 40), (3, 3), 2, 3, 1, 1, 1, 0),  # no padding at all: every segment a whole row of the input
    (2, (23, 41), (3, 3), 5, 9, 1, 2, 1, 1),  # four phases, every other column of the input (odd widths)
    (1, (30, 28), (4, 4), 4, 6, 2, 2, 1, ((2, 1), (1, 2))),  # even widths (the filled planes split the columns)
    (1, (13, 17), (5, 3), 3, 4, 1, (2, 3), (1, 2), ((3, 0), (1, 4))),  # six phases, dilated, uneven padding
    (1, (7, 9, 11), (3, 2, 3), 4, 8, 1, (2, 1, 3), (1, 2, 1), 1),  # 3-D, six phases
    (2, (31, 30), (1, 1), 3, 5, 1, 2, 1, 0),  # a 1x1 layer of stride 2: one phase of four read
    (1, (300,), (7,), 3, 5, 1, 3, 2, ((4, 1),)),  # 1-D of stride 3: copied even where windows in place are allowed
]


@pytest.mark.parametrize("n, size, kernel, c, k, groups, stride, dilation, padding", WINDOW_CASES)
@pytest.mark.parametrize("block", [96, 576, 0])  # 0: windows within no bytes, blocks of a tile
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_implicit_forward_reads_windows_of_the_padded_planes(n, size, kernel, c, k, groups, stride, dilation, padding,
                                                             block, dtype, rng, monkeypatch):
    """The forward from each block's window of the padded, phase-split planes (:data:`WINDOWS_ND`, forced here
    for any vector width and window; :data:`WINDOWS_IN_PLACE` on, which only 1-D stride-1 layers may take):
    bitwise the forward from the filled planes, and the reference's."""
    from convlayer.engine import implicit

    x = rng.standard_normal((n, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    monkeypatch.setattr(implicit, "WINDOW_BLOCK", block or 576)
    monkeypatch.setattr(implicit, "WINDOW_MAX_BYTES", 320 << 10 if block else 0)
    monkeypatch.setattr(implicit, "WINDOWS_IN_PLACE", True)
    calls, window_on = [], [True]
    monkeypatch.setattr(implicit, "_forward_windowed", lambda plan, c, c_g, dtype: calls.append(plan) or window_on[0])
    with force_strategy("implicit"):
        y = CF.conv(x, w, **kw)
        window_on[0] = False
        planes = CF.conv(x, w, **kw)
    assert calls and not any(implicit.interleaves(plan, n, dtype) for plan in calls)  # the windows were read
    assert np.array_equal(y, planes)  # the same products in the same order
    rank = len(size)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"),
                             G.normalize_tuple(dilation, rank, "d"))
    yt = TORCH_CONV[rank](F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)),
                          torch.tensor(w.astype(np.float64)), stride=stride, dilation=dilation, groups=groups)
    assert max_rel_err(y, yt.numpy()) < (1e-12 if dtype == np.float64 else 1e-5)


def test_implicit_forward_windows_where_they_span_few_blocks(monkeypatch):
    """The rule: with :data:`WINDOWS_ND`, windows for layers whose padded planes of an image exceed
    :data:`WINDOWS_MIN_BYTES` and whose kernel reaches less than about twice the block past it
    (:data:`WINDOW_MAX_SPREAD`), the block cut to keep a window within :data:`WINDOW_MAX_BYTES`; 1-D stride-1
    layers always."""
    from convlayer.engine import implicit
    from convlayer.engine.windows import make_plan

    monkeypatch.setattr(implicit, "WINDOWS_ND", True)
    f32 = np.float32
    tile = implicit.FORWARD_NV * implicit.lanes(f32)
    c32 = make_plan((114, 114), (3, 3), (1, 1), (1, 1), (112, 112))  # reaches 230 past the block
    video = make_plan((10, 30, 30), (3, 3, 3), (1, 1, 1), (1, 1, 1), (8, 28, 28))  # 1862 past it
    strided = make_plan((30, 30), (3, 3), (2, 2), (1, 1), (14, 14))  # ResNet 3x3/2: 4 phases of 15 x 15
    pointwise = make_plan((30, 30), (1, 1), (2, 2), (1, 1), (15, 15))  # reads one phase of the four
    wavenet = make_plan((16008,), (2,), (1,), (8,), (16000,))
    lenet = make_plan((14, 14), (5, 5), (1, 1), (1, 1), (10, 10))  # LeNet C3: 6 planes of 196 positions
    assert implicit._forward_windowed(c32, 32, 32, f32)
    assert not implicit._forward_windowed(c32, 4, 4, f32)  # an image's planes, 208 KB, fit in the L2 cache
    assert not implicit._forward_windowed(video, 64, 64, f32)
    assert implicit._forward_windowed(strided, 128, 128, f32)  # 450 KB of planes an image
    assert not implicit._forward_windowed(strided, 64, 64, f32)
    assert not implicit._forward_windowed(lenet, 6, 6, f32)
    assert implicit._window_block(lenet, 6, f32) == implicit._round_up(lenet.length, tile)  # not WINDOW_BLOCK
    # 128 channels of 4 phases take 2 KB a position, so 320 KB hold 160: the block, the kernel's reach of 16 past
    # it and a tile's overhang; the block rounded down to whole tiles (120 with AVX2's tile of 24, 96 with 48)
    fits = (160 - 16 - tile) // tile * tile
    assert implicit._window_block(strided, 128, f32) == fits
    assert implicit._forward_span(strided, fits, f32) * 2048 <= implicit.WINDOW_MAX_BYTES
    assert implicit._forward_span(strided, fits + tile, f32) * 2048 > implicit.WINDOW_MAX_BYTES
    assert implicit._window_block(strided, 32, f32) == implicit._round_up(strided.length, tile)  # 128 KB
    assert implicit._window_block(strided, 4096, f32) == tile  # at least a tile
    assert implicit._tap_phases(strided)[0].tolist() == [0, 225, 450, 675]  # four phases of 15 x 15
    assert implicit._tap_phases(pointwise)[0].tolist() == [0]
    # one phase: four times the channels in 320 KB, with no reach past the block
    assert implicit._window_block(pointwise, 512, f32) == (160 - tile) // tile * tile
    assert implicit._forward_windowed(wavenet, 1, 1, f32)
    monkeypatch.setattr(implicit, "WINDOWS_ND", False)
    assert not implicit._forward_windowed(c32, 32, 32, f32)
    assert implicit._forward_windowed(wavenet, 1, 1, f32)


@pytest.mark.parametrize(
    "size, kernel, c, k, groups, stride, dilation, padding",
    [
        ((300,), (9,), 40, 20, 1, 1, 1, 4),  # blocks of 38 and 34 positions (tails of 6 and 2); 20 outputs: 4 padded
        ((50,), (3,), 6, 4, 2, 1, 20, ((30, 7),)),  # groups; 9 patch rows: 3 padded; windows start and end outside
        ((700,), (2,), 12, 64, 1, 1, 4, ((4, 0),)),  # causal, 64 outputs: two padded
        ((16,), (1,), 8, 6, 1, 1, 1, 0),  # one whole vector of positions, no tail
        ((1600,), (10,), 1, 64, 1, 5, 1, 0),  # the strided stem: the filled planes' phases, 319 positions
        ((203,), (5,), 6, 8, 2, 3, 2, ((4, 1),)),  # strided, dilated, groups, uneven padding
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dot", [True, False])
def test_one_dimensional_weight_gradients_cover_every_block_edge(size, kernel, c, k, groups, stride, dilation,
                                                                 padding, dtype, dot, rng, monkeypatch):
    """The 1-D weight gradient as dot products along the positions (the default) and with the transposed
    blocks of gy (as 2-D and 3-D layers run): blocks of positions full and partial, the masked tail
    of each, padded patch rows and outputs; the input's window where the stride is 1, the filled planes
    otherwise."""
    from convlayer.engine import implicit

    calls = []
    monkeypatch.setattr(implicit, "DOT", dot)
    monkeypatch.setattr(implicit, "DOT_POSITIONS", 40)
    monkeypatch.setattr(implicit, "grad_weight_rows", lambda *a, f=implicit.grad_weight_rows: calls.append(1) or f(*a))
    x = rng.standard_normal((3, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    gy = rng.standard_normal(CF.conv(x, w, **kw).shape).astype(dtype)
    with force_strategy("implicit"):
        gw = CF.conv_backward(gy, x, w, **kw, grads=("weight",))[1]
    assert bool(calls) == dot
    pads = G.resolve_padding(padding, size, kernel, (stride,), (dilation,))
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    F.conv1d(F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)), wt, stride=stride, dilation=dilation,
             groups=groups).backward(torch.tensor(gy.astype(np.float64)))
    assert gw.dtype == dtype
    assert max_rel_err(gw, wt.grad.numpy()) < (1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize(
    "size, kernel, c, k, groups, stride, dilation, n",
    [
        ((5, 2), (3, 3), 3, 1, 1, 1, 2, 2),  # dilated; 10 vectors: three whole tiles and one vector
        ((9, 4), (3, 3), 4, 2, 1, 2, 1, 1),  # strided (the lattice in the phases); out (5, 2 vectors): a tail of two
        ((3, 4, 1), (3, 3, 3), 2, 1, 1, 1, 1, 2),  # 3-D: rows of two planes
        ((6, 1), (3, 3), 6, 2, 2, 1, 1, 2),  # two groups
        ((7, 1), (3, 3), 32, 2, 1, 1, 1, 1),  # 288 patch rows: two chunks of steps
        ((13, 2), (3, 3), 4, 1, 1, 1, 3, 2),  # 26 vectors: blocks whole and partial
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_implicit_forward_tiles_real_positions_where_rows_are_whole_vectors(size, kernel, c, k, groups, stride,
                                                                           dilation, n, dtype, rng, monkeypatch):
    """With output rows of whole vectors (the last size is counted in vectors), the forward on filled planes tiles
    the real output positions, each tile's vectors read where they lie (``_forward_gapped``): the same numbers,
    bitwise, as the tiles over the lattice, and the float64 reference's; tails of one and two vectors, several
    blocks and chunks of steps, groups, strides, dilations, three dimensions. ``k`` counts blocks of FORWARD_MR
    output channels per group."""
    from convlayer.engine import implicit

    lanes = implicit.lanes(dtype)
    size = (*size[:-1], size[-1] * lanes * stride)
    k = k * implicit.FORWARD_MR * groups
    calls = []
    monkeypatch.setattr(implicit, "interleaves", lambda *a: False)  # small planes: interleaved otherwise
    monkeypatch.setattr(implicit, "channels_wide", lambda *a: False)
    monkeypatch.setattr(implicit, "_FORWARD_GAPPED", tuple(
        lambda *a, f=f: calls.append(1) or f(*a) for f in implicit._FORWARD_GAPPED))
    x = rng.standard_normal((n, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=dilation * (kernel[0] // 2))
    with force_strategy("implicit"):
        y = CF.conv(x, w, **kw)
        assert calls and y.shape[-1] % lanes == 0
        monkeypatch.setattr(implicit, "GAPPED", False)
        lattice = CF.conv(x, w, **kw)
    assert len(calls) == 1
    np.testing.assert_array_equal(y, lattice)
    torch_conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(size)]
    yt = torch_conv(torch.tensor(x.astype(np.float64)), torch.tensor(w.astype(np.float64)), **kw)
    assert y.dtype == dtype
    assert max_rel_err(y, yt.numpy()) < (1e-12 if dtype == np.float64 else 1e-5)


def test_forward_channels_read_strided_inputs_padded_but_not_split():
    """The channels-along-vectors forward broadcasts its input element by element: a strided layer's planes are
    filled padded but not split into phases (the stride-1 plan over the same padded input), and read as they lie
    where there is no padding."""
    from convlayer.engine import implicit
    from convlayer.engine.windows import make_plan

    strided = make_plan((30, 30), (3, 3), (2, 2), (1, 1), (14, 14))
    layout = implicit.channel_layout(strided)
    assert layout.unit_stride and layout.full == layout.padded == strided.full and layout.phases == 1
    assert implicit.channel_layout(layout) is layout
    valid = make_plan((10, 11), (3, 3), (2, 2), (1, 1), (4, 5))
    assert implicit._as_given(implicit.channel_layout(valid), (2, 16, 10, 11), ((0, 0), (0, 0)))
    assert not implicit._as_given(valid, (2, 16, 10, 11), ((0, 0), (0, 0)))


def test_forward_channels_along_vectors_only_for_one_vector_of_channels():
    """LeNet C3's 16 output channels fill one float32 vector: channels along the vectors; DCGAN's 256 (16
    vectors, the input broadcast again for each) and 10 (6 of 16 lanes padding) keep the interleaved tiles."""
    from convlayer.engine import implicit

    width = implicit.lanes(np.float32)
    assert implicit.channels_fit(width, np.float32)
    assert implicit.channels_fit(width * 7 // 8, np.float32)
    assert not implicit.channels_fit(16 * width, np.float32)
    assert not implicit.channels_fit(2 * width, np.float32)
    assert not implicit.channels_fit(width * 5 // 8, np.float32)


def test_forward_channels_on_the_wide_tile_where_the_tiles_cover_many_positions_more(monkeypatch):
    """With AVX-512's widths: ResNet 3x3/2 (the tiles cover 1.22 times its outputs) and the 3-D C64 layer (1.14)
    take the wide channels-along-vectors tile; the dilated d4 (1.125), DeepBench C128 (1.10), ResNet 3x3 (1.04),
    a 1-D layer and outputs per group that are not a multiple of the tile's 64 channels do not."""
    from convlayer.engine import implicit
    from convlayer.engine.windows import make_plan

    monkeypatch.setattr(implicit, "VECTOR_BYTES", 64)
    monkeypatch.setattr(implicit, "WIDE_NV", 4)
    monkeypatch.setattr(implicit, "FORWARD_NV", 3)
    monkeypatch.setattr(implicit, "CHANNELS", True)
    plans = {"3x3/2": ((30, 30), (3, 3), (2, 2), (1, 1), (14, 14)), "3-D": ((10, 30, 30), (3,) * 3, (1,) * 3, (1,) * 3,
             (8, 28, 28)), "d4": ((72, 72), (3, 3), (1, 1), (4, 4), (64, 64)), "C128": ((30, 30), (3, 3), (1, 1),
             (1, 1), (28, 28)), "3x3": ((58, 58), (3, 3), (1, 1), (1, 1), (56, 56)), "1-D": ((16008,), (9,), (1,), (1,),
             (16000,))}
    wide = {name for name, args in plans.items() if implicit.channels_wide(make_plan(*args), 256, np.float32)}
    assert wide == {"3x3/2", "3-D"}
    assert not implicit.channels_wide(make_plan(*plans["3x3/2"]), 96, np.float32)  # 1.5 tiles of channels
    assert implicit.channels_wide(make_plan(*plans["3-D"]), 32, np.float64)  # 4 vectors of 8 doubles
    assert not implicit.channels_wide(make_plan(*plans["3x3/2"]), 32, np.float64)  # tiles of 24 doubles: 1.10
    monkeypatch.setattr(implicit, "CHANNELS", False)  # without AVX-512: never
    assert not implicit.channels_wide(make_plan(*plans["3x3/2"]), 256, np.float32)


@pytest.mark.parametrize(
    "n, size, kernel, c, k, groups, stride, dilation, padding",
    [
        (3, (9, 9), (3, 3), 32, 64, 1, 2, 1, 1),  # filled planes; 288 steps, two chunks; 75 positions, a partial block
        (2, (10, 11), (3, 3), 16, 64, 1, 2, 1, 0),  # strided, unpadded: read as it lies (a row no window reaches)
        (2, (5, 7, 6), (3, 3, 3), 8, 128, 2, 1, 1, 1),  # 3-D, two groups of 64 outputs
        (2, (30,), (3,), 16, 64, 1, 1, 4, 4),  # 1-D, dilated: the unpadded input would be read where it lies
        (4, (6, 6), (5, 5), 64, 64, 1, 1, 1, 0),  # 4 positions per image: blocks and tiles span images
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_with_channels_along_vectors_on_the_wide_tile(n, size, kernel, c, k, groups, stride, dilation, padding,
                                                              dtype, rng, monkeypatch):
    """The forward with the output channels along the vectors on the wide tile (blocks of
    CHANNELS_WIDE_POSITIONS positions, steps CHANNELS_WIDE_STEPS at a time; on by default with AVX-512 where
    the usual tiles would cover many positions more than the outputs, forced here) gives PyTorch's results, and
    an image's inf and NaN reach none of the other images' outputs."""
    _check_forward_channels(n, size, kernel, c, k, groups, stride, dilation, padding, dtype, rng, monkeypatch, True,
                            CHANNELS_WIDE_MIN_COVER=0.0, INTERLEAVE_MIN_OVERHANG=1e9)  # never interleaved


@pytest.mark.parametrize(
    "n, size, kernel, c, k, groups, stride, dilation, padding",
    [
        (9, (14, 14), (5, 5), 6, 16, 1, 1, 1, 0),  # LeNet C3: the planes as they lie; 900 positions, a partial tile
        (5, (8, 8), (4, 4), 12, 32, 1, 2, 1, 1),  # DCGAN's 4x4/2: filled planes, 2 (float32) or 4 vectors of outputs
        (3, (13,), (5,), 9, 42, 3, 2, 2, ((3, 1),)),  # 1-D, groups of 14 outputs: padded to 16
        (4, (4, 5, 3), (3, 2, 3), 6, 32, 2, (1, 2, 1), 1, 1),  # 3-D, groups
        (7, (6, 6), (5, 5), 16, 120, 1, 1, 1, 0),  # LeNet C5's kernel, 4 positions per image: a tile spans images
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_with_channels_along_vectors(n, size, kernel, c, k, groups, stride, dilation, padding, dtype, rng,
                                             monkeypatch):
    """The forward on small planes with the output channels along the vectors (on by default with AVX-512 and
    one vector of channels only, forced here) gives PyTorch's results, and an image's inf and NaN reach none
    of the other images' outputs."""
    _check_forward_channels(n, size, kernel, c, k, groups, stride, dilation, padding, dtype, rng, monkeypatch, False,
                            CHANNELS_MAX_VECTORS=32, INTERLEAVE_MIN_OVERHANG=0.0)  # C5's 120: 30 AVX2 vectors


def _check_forward_channels(n, size, kernel, c, k, groups, stride, dilation, padding, dtype, rng, monkeypatch, wide,
                            **settings):
    """The channels-along-vectors forward, forced on (``CHANNELS``) with the module ``settings`` of
    :mod:`.implicit`, on the ``wide`` tile or the narrow one, against PyTorch in float64, with inf and NaN in
    the first image."""
    from convlayer.engine import implicit

    calls = []
    monkeypatch.setattr(implicit, "CHANNELS", True)
    for name, value in settings.items():
        monkeypatch.setattr(implicit, name, value)
    monkeypatch.setattr(implicit, "forward_channels",
                        lambda *a, wide, f=implicit.forward_channels: calls.append(wide) or f(*a, wide=wide))
    x = rng.standard_normal((n, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    x[0].flat[::7] = np.inf
    x[0].flat[3::7] = np.nan
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    with force_strategy("implicit"):
        y = CF.conv(x, w, **kw)
    assert calls and set(calls) == {wide}
    rank = len(size)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"),
                             G.normalize_tuple(dilation, rank, "d"))
    expected = TORCH_CONV[rank](F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)),
                                torch.tensor(w.astype(np.float64)), stride=stride, dilation=dilation,
                                groups=groups).numpy()
    assert y.dtype == dtype and y.shape == expected.shape
    assert np.isfinite(y[1:]).all()
    np.testing.assert_array_equal(np.isnan(y[0]), np.isnan(expected[0]))
    finite = np.isfinite(expected[0])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert max_rel_err(y[1:], expected[1:]) < tol
    assert max_rel_err(np.where(finite, y[0], 0), np.where(finite, expected[0], 0)) < tol


@pytest.mark.parametrize(
    "n, size, kernel, c, k, groups, stride, dilation, padding",
    [
        (5, (8, 8), (4, 4), 12, 20, 1, 2, 1, 1),  # DCGAN's 4x4/2 on a small plane
        (3, (13,), (5,), 9, 17, 1, 2, 2, ((3, 1),)),  # 1-D, strided and dilated, uneven padding
        (4, (4, 5, 3), (3, 2, 3), 6, 12, 2, (1, 2, 1), 1, 1),  # 3-D, groups
        (2, (7, 9), (3, 3), 40, 9, 1, 1, (1, 2), 0),  # 360 patch rows: two calls of BLOCK_ROWS
        (70, (3, 3), (2, 2), 4, 8, 1, 1, 1, 0),  # a lattice of 280 positions: two blocks of the batch
        (16, (7, 7), (3, 3), 30, 8, 1, 1, 1, 0),  # 270 patch rows; rows of 80 positions, 32 dropped between
        (5, (9, 8), (3, 3), 6, 10, 1, 2, 1, 0),  # even width, columns split; the last column reached by no window
        (5, (10, 10), (2, 2), 6, 10, 1, 3, 1, 0),  # stride 3: every third row and column reached by no window
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_implicit_forward_interleaves_the_images_of_small_planes(n, size, kernel, c, k, groups, stride, dilation,
                                                                 padding, dtype, rng, monkeypatch):
    """The implicit forward and input gradient with the images' positions interleaved give PyTorch's results,
    and an image's inf and NaN reach none of the other images' outputs (their reads never cross into another
    image)."""
    from convlayer.engine import implicit

    x = rng.standard_normal((n, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    x[0].flat[::7] = np.inf
    x[0].flat[3::7] = np.nan
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    monkeypatch.setattr(implicit, "INTERLEAVE_MIN_OVERHANG", 0.0)  # whatever the tiles' overhang
    with force_strategy("implicit"):
        y = CF.conv(x, w, **kw)
    rank = len(size)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"),
                             G.normalize_tuple(dilation, rank, "d"))
    yt = TORCH_CONV[rank](F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)),
                          torch.tensor(w.astype(np.float64)), stride=stride, dilation=dilation, groups=groups)
    expected = yt.numpy()
    assert np.isfinite(y[1:]).all()
    np.testing.assert_array_equal(np.isnan(y[0]), np.isnan(expected[0]))
    finite = np.isfinite(expected[0])
    np.testing.assert_array_equal(y[0][~finite & ~np.isnan(expected[0])], expected[0][~finite & ~np.isnan(expected[0])])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert max_rel_err(y[1:], expected[1:]) < tol
    assert max_rel_err(np.where(finite, y[0], 0), np.where(finite, expected[0], 0)) < tol
    gy = rng.standard_normal(y.shape).astype(dtype)
    xt = torch.tensor(np.zeros(x.shape), requires_grad=True)
    TORCH_CONV[rank](F.pad(xt, torch_pad_arg(pads)), torch.tensor(w.astype(np.float64)), stride=stride,
                     dilation=dilation, groups=groups).backward(torch.tensor(gy.astype(np.float64)))
    monkeypatch.setattr(implicit, "INTERLEAVE_MIN_JOBS_PER_THREAD", 0)
    with force_strategy("implicit"):
        gx = CF.conv_backward(gy, x, w, **kw, grads=("input",))[0]
    assert implicit.grad_input_spread(_plan_of(x.shape, w.shape, kw), n, dtype, 1) == n
    assert max_rel_err(gx, xt.grad.numpy()) < tol


@pytest.mark.parametrize("n", [32, 64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_implicit_grad_input_interleaves_runs_of_images(n, dtype, rng, monkeypatch):
    """LeNet C3's input gradient, one job per lattice: runs of INTERLEAVE_IMAGES images interleaved, each run a
    lattice of its own, the tiles skipping the positions dropped between rows; an image's NaN reaches no other
    image's gradient. Interleaving wherever it covers fewer positions: AVX2's float64 tiles, 8 positions wide,
    cover 120 per image alone against 100 interleaved, under the rule's INTERLEAVE_MIN_OVERHANG."""
    from convlayer.engine import implicit

    monkeypatch.setattr(implicit, "INTERLEAVE_MIN_OVERHANG", 1.0)
    x_shape = (n, 6, 14, 14)
    w = rng.standard_normal((16, 6, 5, 5)).astype(dtype)
    gy = rng.standard_normal((n, 16, 10, 10)).astype(dtype)
    gy[17, 3, 4, 4] = np.nan
    plan = _plan_of(x_shape, w.shape, dict(stride=1, dilation=1, padding=0))
    if (n // implicit.INTERLEAVE_IMAGES) % numba.get_num_threads() == 0:
        assert implicit.grad_input_spread(plan, n, dtype, 1) == implicit.INTERLEAVE_IMAGES
    with force_strategy("implicit"):
        gx = CF.conv_backward(gy, np.zeros(x_shape, dtype), w, grads=("input",))[0]
    xt = torch.zeros(x_shape, dtype=torch.float64, requires_grad=True)
    F.conv2d(xt, torch.tensor(w.astype(np.float64))).backward(torch.tensor(gy.astype(np.float64)))
    expected = xt.grad.numpy()
    np.testing.assert_array_equal(np.isnan(gx), np.isnan(expected))
    assert np.isnan(expected[17]).any() and not np.isnan(np.delete(expected, 17, axis=0)).any()
    finite = ~np.isnan(expected)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert max_rel_err(np.where(finite, gx, 0), np.where(finite, expected, 0)) < tol


def _plan_of(x_shape, w_shape, kw):
    from convlayer.engine.windows import make_plan

    size, kernel = x_shape[2:], w_shape[2:]
    rank = len(size)
    stride = G.normalize_tuple(kw["stride"], rank, "s")
    dilation = G.normalize_tuple(kw["dilation"], rank, "d")
    pads = G.resolve_padding(kw["padding"], size, kernel, stride, dilation)
    full = tuple(s + lo + hi for s, (lo, hi) in zip(size, pads))
    out = tuple((f - (k - 1) * d - 1) // st + 1 for f, k, d, st in zip(full, kernel, dilation, stride))
    return make_plan(full, kernel, stride, dilation, out)


@pytest.mark.parametrize(
    "n, size, kernel, padding",
    [(64, (14, 14), (5, 5), 0), (256, (14, 14), (5, 5), 0), (1, (14, 14), (5, 5), 0), (3, (9, 30), (3, 3), 1),
     (16, (8, 8), (2, 2), 1), (16, (7, 7), (2, 2), 1), (5, (4, 5, 3), (3, 2, 3), 1)],
)
def test_forward_tiles_cover_each_real_position_once_and_start_at_none_dropped(n, size, kernel, padding):
    """The forward's tiles (:func:`.implicit._tile_starts`), block by block, on one image's lattice or ``n`` images
    interleaved: none overlap, none starts at a dropped position, every real position of the block is covered
    once by the vectors each computes (:func:`.implicit._tile_vectors`: fewer where the rest would be dropped);
    with LeNet C3's images interleaved they skip the dropped positions, 4 x n after every 10 x n real ones."""
    from convlayer.engine import direct, implicit
    from convlayer.engine.windows import make_plan

    rank = len(size)
    full = tuple(s + 2 * padding for s in size)
    out = tuple(f - k + 1 for f, k in zip(full, kernel))
    plan = make_plan(full, kernel, (1,) * rank, (1,) * rank, out)
    _, _, _, rows, width = direct.run_arrays(plan, True)
    rows, width, length = rows * n, width * n, plan.length * n
    lanes = implicit.lanes(np.float32)
    nr = implicit.FORWARD_NV * lanes
    real = np.zeros(length + nr, dtype=bool)
    for r in rows:
        real[r:r + width] = True
    covered = np.zeros(length + nr, dtype=int)
    tiles = cut = 0
    for p0 in range(0, length, implicit.BLOCK_POSITIONS):
        nc = min(implicit.BLOCK_POSITIONS, length - p0)
        starts = implicit._tile_starts(rows, width, p0, nc, nr)
        assert (np.diff(starts) >= nr).all() and (starts < nc).all()
        assert real[p0 + starts].all()
        vectors = implicit._tile_vectors(rows, width, p0, nc, starts, nr, lanes)
        assert ((vectors >= 1) & (vectors <= implicit.FORWARD_NV)).all()
        for j, v in zip(starts, vectors):
            covered[p0 + j:p0 + min(j + v * lanes, nc)] += 1  # each block copies out its own positions only
        cut += int((vectors < implicit.FORWARD_NV).sum())
        tiles += len(starts)
    assert (covered[real] == 1).all()
    if size == (14, 14) and n > 1:  # C3: about 10 / 14 of the tiles over the whole lattice
        assert tiles < 0.8 * -(-length // nr)
    if size == (7, 7) and nr == 48:  # as DCGAN's: rows of 8 x 16 real positions, 16 dropped; the third tile cut
        assert cut >= 8


def test_window_plans_hash_as_their_fields():
    """Plans key the engine's caches: two plans of one geometry, built apart, are equal and hash alike (the kept
    hash is the fields'), and a plan of another geometry is neither."""
    import dataclasses

    from convlayer.engine.windows import make_plan

    build = make_plan.__wrapped__  # past make_plan's own cache: two objects
    a, b = build((14, 14), (5, 5), (1, 1), (1, 1), (10, 10)), build((14, 14), (5, 5), (1, 1), (1, 1), (10, 10))
    other = build((14, 14), (5, 5), (1, 1), (2, 2), (6, 6))
    assert a is not b and a == b and hash(a) == hash(b) == hash(dataclasses.astuple(a))
    assert hash(a) == hash(a) and a != other and hash(other) == hash(dataclasses.astuple(other)) != hash(a)


@pytest.mark.parametrize("size, kernel, stride, dilation", [
    ((28, 28), (3, 3), (2, 2), (1, 1)),  # ResNet 3x3/2: a 15 x 14 lattice, one column dropped per row
    ((64, 64), (3, 3), (1, 1), (4, 4)),  # dilated d4: 8 columns dropped per row
    ((10, 12, 12), (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # 3-D: columns and rows dropped
    ((100,), (9,), (1,), (1,)),  # 1-D: none dropped
])
def test_weight_gradient_steps_are_the_output_positions_in_the_lattice(size, kernel, stride, dilation):
    """The weight gradient's tile steps over the output positions only, in gy's order, each where it lies in the
    lattice: the dropped columns between output rows are not multiplied."""
    from convlayer.engine import implicit
    from convlayer.engine.windows import lattice_mask, make_plan

    padded = tuple(s + k - 1 for s, k in zip(size, kernel))  # "same"-like padding by k - 1 in all
    out = tuple((p - d * (k - 1) - 1) // s + 1 for p, k, s, d in zip(padded, kernel, stride, dilation))
    plan = make_plan(padded, kernel, stride, dilation, out)
    steps = implicit._output_steps(plan)
    assert steps.shape == (math.prod(out),)
    assert np.array_equal(steps, np.flatnonzero(lattice_mask(plan)))
    assert (len(size) == 1) == (steps[-1] == plan.length - 1 == steps.shape[0] - 1)  # gaps but in 1-D


@pytest.mark.parametrize("length", [1, 100, 511, 512, 513, 838, 1024, 1025, 3246, 12766])
def test_weight_gradient_blocks_are_as_even_as_can_be(length):
    """The weight gradient's jobs: as few blocks as GRAD_WEIGHT_POSITIONS allows, no two differing by more than
    one block's worth of rounding (838 positions: two of 419, not 512 and 326, which one thread got all of)."""
    from convlayer.engine import implicit

    most = implicit.GRAD_WEIGHT_POSITIONS
    size = implicit._even_blocks(length, most)
    blocks = -(-length // size)
    assert size <= most and blocks == -(-length // most)
    assert length - (blocks - 1) * size > size - blocks  # the last block is within `blocks` of the others


@pytest.mark.parametrize(
    "size, kernel, c, k, groups, stride, dilation, padding",
    [
        ((23, 41), (5, 3), 7, 9, 1, 2, (1, 2), ((2, 1), (0, 3))),  # the narrow tile, 9 outputs of 16 or 32
        ((20, 21), (3, 3), 10, 128, 2, 1, 1, 1),  # 64 outputs per group: the wide tile; groups
        ((7, 9, 11), (3, 2, 3), 6, 12, 2, (1, 2, 1), 1, 1),  # 3-D
        ((16, 16), (4, 4), 12, 64, 1, 2, 1, 1),  # DCGAN's shape: 4x4 stride 2, positions dropped between rows
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_gradient_by_chunks_of_patch_rows(size, kernel, c, k, groups, stride, dilation, padding, dtype, rng,
                                                 monkeypatch):
    """The weight gradient's jobs by patch rows (``_grad_weight_chunks``), forced on small layers: chunks of a few
    tiles and a shorter last one, several blocks of positions per image, the first block's products stored and
    the others added, the padding rows and channels left out; inf and NaN reach the entries they reach in PyTorch;
    the work array within the workspace's count."""
    from convlayer.engine import gemm, implicit

    monkeypatch.setattr(implicit, "CHUNKS_MIN_BYTES", 0)
    monkeypatch.setattr(implicit, "CHUNK_ROWS", 20)
    monkeypatch.setattr(implicit, "GRAD_WEIGHT_POSITIONS", 50)
    calls, asked = [], []
    monkeypatch.setattr(implicit, "_GRAD_WEIGHT_CHUNKS",
                        tuple(lambda *a, f=f: calls.append(a[5]) or f(*a) for f in implicit._GRAD_WEIGHT_CHUNKS))
    scratch, per_image = gemm._scratch, []
    monkeypatch.setattr(implicit, "grad_weight_bytes",
                        lambda *a, f=implicit.grad_weight_bytes: per_image.append(f(*a)) or per_image[-1])
    monkeypatch.setattr(gemm, "_scratch", lambda dt: lambda shape: asked.append(math.prod(shape)) or scratch(dt)(shape))
    x = rng.standard_normal((3, c, *size)).astype(dtype)
    x.flat[x.size // 3] = np.inf
    x.flat[2 * x.size // 3 + 5] = np.nan
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    y = CF.conv(np.nan_to_num(x), w, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    asked.clear()
    with force_strategy("implicit"):
        _, gw, _ = CF.conv_backward(gy, x, w, **kw, grads=("weight",))
    rows = c // groups * math.prod(kernel)
    assert len(calls) == 1 and calls[0] < rows  # the chunk's rows: more than one job per group
    # the work array: within the bytes per image that the batch's chunks are sized by (and a vector's alignment)
    assert len(asked) == len(per_image) == 1 and asked[0] * x.itemsize <= 3 * per_image[0] + implicit.VECTOR_BYTES
    rank = len(size)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"),
                             G.normalize_tuple(dilation, rank, "d"))
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    TORCH_CONV[rank](F.pad(torch.tensor(x.astype(np.float64)), torch_pad_arg(pads)), wt, stride=stride,
                     dilation=dilation, groups=groups).backward(torch.tensor(gy.astype(np.float64)))
    expected = wt.grad.numpy()
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(gw), np.isinf(expected))
    finite = np.isfinite(expected)
    assert finite.any() and not finite.all()
    assert gw.dtype == dtype
    assert max_rel_err(gw[finite], expected[finite]) < (1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_weight_gradient_chunks_keep_their_sums_within_half_the_l2(threads):
    """The weight gradient's chunks of patch rows: whole tiles of rows, a number of jobs that the threads share
    evenly, at most CHUNK_ROWS rows, and sums of at most CHUNK_MAX_BYTES a job where a tile's rows fit in it."""
    from convlayer.engine import implicit

    for ctp, mr, kgp in [(2048, 6, 256), (1152, 6, 256), (1152, 6, 128), (1024, 6, 128), (96, 6, 4096),
                         (30000, 8, 16)]:
        rows = implicit._chunk_rows(ctp, mr, threads, kgp * 4)
        jobs = -(-ctp // rows)
        assert rows % mr == 0 and rows <= implicit._round_up(implicit.CHUNK_ROWS, mr)
        assert rows * kgp * 4 <= max(implicit.CHUNK_MAX_BYTES, mr * kgp * 4) + mr * kgp * 4
        assert jobs >= threads or jobs == -(-ctp // mr)  # the threads each get a job, where there are enough
    assert implicit._chunk_rows(2048, 4, 2, 256 * 4) == 256  # DCGAN 256->128: 8 jobs of 256 rows (512 before)
    assert implicit._chunk_rows(1152, 6, 2, 128 * 4) == 288  # DeepBench C128: 4 jobs, as before the bound


def test_implicit_forward_interleaves_where_the_tiles_overhang_the_lattice():
    """The rule: several images, and tiles covering more than INTERLEAVE_MIN_OVERHANG times the lattice."""
    from convlayer.engine import implicit
    from convlayer.engine.windows import make_plan

    width = implicit.FORWARD_NV * implicit.lanes(np.float32)
    short = make_plan((width + 2,), (3,), (1,), (1,), (width + 1,))  # one position past a whole tile
    assert implicit.interleaves(short, 8, np.float32)
    assert not implicit.interleaves(short, 1, np.float32)  # one image: nothing to interleave
    exact = make_plan((2 * width + 2,), (3,), (1,), (1,), (2 * width,))  # whole tiles
    assert not implicit.interleaves(exact, 8, np.float32)
    dcgan = make_plan((18, 18), (4, 4), (2, 2), (1, 1), (8, 8))  # 71 lattice positions
    assert implicit.interleaves(dcgan, 16, np.float32) == (width == 48)  # 96 positions for 48-wide tiles, 72 for 24
    c3 = make_plan((14, 14), (5, 5), (1, 1), (1, 1), (10, 10))  # 136 lattice positions, 144 under the tiles
    assert implicit._interleaved_positions(c3, 64, np.float32) == 100  # 4 x 64 dropped between rows: skipped
    assert implicit.interleaves(c3, 64, np.float32)
    assert implicit._interleaved_positions(c3, 2, np.float32) == 136  # 4 x 2: covered
    assert not implicit.interleaves(c3, 2, np.float32)
    # the input gradient: its tiles, NV vectors wide, skip dropped runs a tile wide; the whole batch interleaved
    # where the jobs per lattice are many, else runs of INTERLEAVE_IMAGES that divide the batch
    nr = implicit.NV * implicit.lanes(np.float32)
    threads = numba.get_num_threads()
    many = implicit.INTERLEAVE_MIN_JOBS_PER_THREAD * threads
    m = implicit.INTERLEAVE_IMAGES
    if nr == 32:  # AVX-512: 96 positions per image alone; interleaved, each row's 8 x n real ones, 64 per image
        assert implicit._grad_input_covered(dcgan, 1, np.float32) == 96
        assert implicit._grad_input_covered(dcgan, 16, np.float32) == 64
        assert implicit._grad_input_covered(c3, 1, np.float32) == 160  # 5 tiles for 136 positions
        assert implicit._grad_input_covered(c3, 16, np.float32) == 100  # 10 rows of 5 tiles, the gaps skipped
        assert implicit.grad_input_spread(dcgan, 32, np.float32, many) == 32
        assert implicit.grad_input_spread(dcgan, 32, np.float32, threads) == m  # 2 runs, threads jobs each
        assert implicit.grad_input_spread(dcgan, 2 * m + 8, np.float32, threads) == 1  # runs must divide the batch
        # one job per lattice: runs of m images where their jobs share out evenly over the threads
        assert implicit.grad_input_spread(c3, 64, np.float32, 1) == (m if (64 // m) % threads == 0 else 1)
        assert implicit.grad_input_spread(c3, 3 * m, np.float32, 1) == (m if 3 % threads == 0 else 1)
        assert implicit.grad_input_spread(c3, m, np.float32, 1) == (m if threads == 1 else 1)
    if nr == 16:  # AVX2: 80 positions per image alone (5 tiles for 72), 64 interleaved: 1.25 times, interleaved
        assert implicit._grad_input_covered(dcgan, 1, np.float32) == 80
        assert implicit._grad_input_covered(dcgan, 16, np.float32) == 64
        assert implicit.grad_input_spread(dcgan, 16, np.float32, many) == 16
    exact = make_plan((nr + 4,), (5,), (1,), (1,), (nr,))
    assert implicit.grad_input_spread(exact, 4 * m, np.float32, many) == 1  # whole tiles: nothing to gain


@pytest.mark.parametrize(
    "size, kernel, c, k, groups, stride, dilation, padding, flips",
    [
        ((40,), (9,), 8, 6, 1, 1, 1, ((0, 8),), True),  # padding = the kernel's reach: flipped padding 0 after
        ((12, 13), (3, 3), 16, 12, 2, 1, 2, ((2, 4), (0, 1)), True),  # groups, dilation, asymmetric padding
        ((5, 6, 7), (3, 3, 3), 8, 5, 1, 1, 1, 0, True),  # 3-D, no padding: the flipped padding is the reach
        ((12, 13), (3, 3), 16, 16, 4, 1, 1, ((1, 1), (1, 1)), True),  # 4 x 4 channels per group: direct forward
        ((12, 13), (3, 3), 6, 6, 6, 1, 1, 1, True),  # depthwise: direct forward
        ((12, 13), (3, 3), 1, 6, 1, 1, 1, 1, False),  # 1 -> 6 channels: the flipped 6 -> 1 is slower
        ((12, 13), (3, 3), 6, 16, 1, 1, 1, 1, False),  # 6 outputs of the flipped problem: a part-empty tile
        ((6, 7), (3, 3), 8, 8, 1, 1, 1, ((3, 0), (1, 1)), True),  # padding beyond the kernel's reach: gy sliced
        ((3, 9), (3, 3), 8, 8, 1, (2, 1), 1, ((0, 1), (1, 1)), True),  # one output row, stride 2: a tail unread
        ((12, 13), (3, 3), 8, 8, 1, 2, 1, 1, False),  # a stride on small planes: the patch matrix
        ((34, 32), (4, 4), 8, 8, 1, 2, 1, 1, True),  # a stride, 16 x 16 outputs: one forward per stride phase
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_input_gradient_as_the_flipped_forward(size, kernel, c, k, groups, stride, dilation, padding, flips, dtype,
                                               rng, monkeypatch):
    """The planner's input gradient as forward convolutions of ``gy`` with the flipped kernel (one per stride
    phase), exactly where the rules take it, and the same gradient as PyTorch's everywhere; infinite weights
    take the exact path. The rules as with AVX-512 (without it, strided layers take the implicit GEMM: below)."""
    from convlayer.engine import gemm

    monkeypatch.setattr(gemm, "_strided_grad_input_implicit", lambda: False)
    calls = []
    flipped_weights = gemm._flipped_weights
    monkeypatch.setattr(gemm, "_flipped_weights", lambda *a: calls.append(1) or flipped_weights(*a))
    x = rng.standard_normal((2, c, *size)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    kw = dict(stride=stride, dilation=dilation, groups=groups)
    rank = len(size)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"),
                             G.normalize_tuple(dilation, rank, "d"))
    y = CF.conv(x, w, padding=padding, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for inf in (False, True):
        if inf:
            w[0, 0, (0,) * rank] = np.inf
        calls.clear()
        with np.errstate(invalid="ignore"):  # inf * 0 in a product is expected with the infinite weight
            gx, _, _ = CF.conv_backward(gy, x, w, padding=padding, **kw)
        assert bool(calls) == (flips and not inf)
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        yt = TORCH_CONV[rank](F.pad(xt, torch_pad_arg(pads)), torch.tensor(w.astype(np.float64)), **kw)
        yt.backward(torch.tensor(gy.astype(np.float64)))
        expected = xt.grad.numpy()
        assert np.array_equal(np.isfinite(gx), np.isfinite(expected))
        finite = np.isfinite(expected)
        assert max_rel_err(gx[finite], expected[finite]) < tol


@pytest.mark.parametrize(
    "size, kernel, stride, dilation, pads",
    [
        ((9, 10), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1))),  # ResNet's 3x3/2: 2x2, 2x1, 1x2 and 1x1 sub-kernels
        ((8,), (4,), (2,), (1,), ((1, 2),)),  # DCGAN's 4/2 transposed: two 2-tap phases
        ((13,), (3,), (4,), (1,), ((0, 0),)),  # kernel shorter than the stride: a phase no tap reaches
        ((11, 7), (3, 2), (2, 3), (2, 3), ((4, 0), (0, 5))),  # gcd(s, d) > 1, padding beyond the kernel's reach
        ((5, 6, 7), (2, 3, 3), (3, 1, 2), (1, 2, 1), ((1, 1), (0, 4), (2, 0))),  # 3-D, mixed strides
    ],
)
def test_input_gradient_by_stride_phases(size, kernel, stride, dilation, pads, rng):
    """The input gradient as one forward convolution per stride phase equals the patch matrix's, exactly."""
    from convlayer.engine import gemm
    from convlayer.engine.windows import make_plan

    full = tuple(n + lo + hi for n, (lo, hi) in zip(size, pads))
    out = tuple((f - d * (k - 1) - 1) // s + 1 for f, k, s, d in zip(full, kernel, stride, dilation))
    plan = make_plan(full, kernel, stride, dilation, out)
    groups, c, k = 2, 6, 4
    w = rng.standard_normal((k, c // groups, *kernel))
    gy = rng.standard_normal((2, k, *out))
    with force_strategy("cols"):
        expected = gemm.conv_grad_input(gy, w, groups, plan, (2, c, *size), pads)
    got = gemm._grad_input_flipped(gy, w, groups, plan, (2, c, *size), pads)
    assert max_rel_err(got, expected) < 1e-12


def test_dynamic_jobs_are_each_taken_once():
    """:func:`.direct._take`: threads taking jobs from one counter as they come free take every job once."""
    from numba import get_num_threads, njit, prange

    from convlayer.engine.direct import _take

    @njit(parallel=True)
    def take_all(jobs, threads):
        counter = np.zeros(1, dtype=np.int64)
        taken = np.zeros(jobs, dtype=np.int64)
        for _ in prange(threads):
            job = _take(counter)
            while job < jobs:
                taken[job] += 1
                job = _take(counter)
        return taken

    for jobs in (0, 1, 7, 10_000):
        for threads in (1, get_num_threads(), 2 * get_num_threads()):
            assert (take_all(jobs, threads) == 1).all()


# Layers whose passes run on all threads through the implicit GEMM's kernels that deal their jobs either way
# (DYNAMIC_JOBS): (n, c, k, size, kernel, stride, padding); the forward (from windows of the input, from the
# filled planes) and the input gradient; the weight gradient by chunks of patch rows (the last case); the
# weight gradient by blocks of positions and, 1-D, by dot products, which keeps its shares.
DYNAMIC_CASES = [
    (4, 40, 32, (48, 48), (3, 3), 1, 1),
    (3, 12, 24, (29, 31), (3, 3), 2, (0, 2)),
    (4, 32, 32, (700,), (9,), 1, 4),
    (2, 128, 128, (12, 12), (3, 3), 1, 1),  # 1152 x 128 sums: by chunks of patch rows
]


@pytest.mark.parametrize("n, c, k, size, kernel, stride, padding", DYNAMIC_CASES)
def test_kernels_deal_their_jobs_either_way(n, c, k, size, kernel, stride, padding, rng, monkeypatch):
    """The kernels that take their jobs as they come free (:data:`.direct.DYNAMIC_JOBS`) or in equal shares:
    the same forward, input gradient and weight gradient by chunks of patch rows bitwise (each job writes its own
    outputs), and the same weight gradient by blocks of positions bitwise, call after call (its jobs keep their
    shares: each thread sums its own)."""
    from convlayer.engine import direct

    x = rng.standard_normal((n, c, *size)).astype(np.float32)
    w = rng.standard_normal((k, c, *kernel)).astype(np.float32)
    kw = dict(stride=stride, padding=padding)
    results = []
    for dynamic in (True, False):
        monkeypatch.setattr(direct, "DYNAMIC_JOBS", dynamic)
        assert direct.dynamic_threads(True) == (numba.get_num_threads() if dynamic else 0)
        with force_strategy("implicit"):
            y = CF.conv(x, w, **kw)
            gy = np.cos(y)
            results.append((y, *CF.conv_backward(gy, x, w, **kw)[:2]))
            assert np.array_equal(CF.conv_backward(gy, x, w, **kw)[1], results[-1][2])  # again: the same sums
    (y, gx, gw), (y0, gx0, gw0) = results
    assert np.array_equal(y, y0) and np.array_equal(gx, gx0) and np.array_equal(gw, gw0)
    rank = len(size)
    pads = G.resolve_padding(padding, size, kernel, G.normalize_tuple(stride, rank, "s"), (1,) * rank)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    yt = TORCH_CONV[rank](F.pad(xt, torch_pad_arg(pads)), wt, stride=stride)
    yt.backward(torch.tensor(np.cos(y).astype(np.float64)))
    for got in (y, y0):
        assert max_rel_err(got, yt.detach().numpy()) < 1e-5
    for got in (gw, gw0):
        assert max_rel_err(got, wt.grad.numpy()) < 1e-5
    assert max_rel_err(gx, xt.grad.numpy()) < 1e-5


@pytest.mark.parametrize("avx512", [True, False])
def test_strided_input_gradients_take_the_implicit_gemm_without_full_width_avx512(avx512, rng, monkeypatch):
    """Except with full-width AVX-512 (``avx512``: Intel's) a strided input gradient with many channels runs
    on the implicit GEMM, before the patch matrix and the flipped phases; stride 1 keeps the flipped forward;
    the gradient is PyTorch's."""
    from convlayer.engine import gemm, implicit
    from convlayer.engine.windows import make_plan

    assert gemm._strided_grad_input_implicit() == (not implicit.FULL_WIDTH_512)
    assert implicit.FULL_WIDTH_512 <= (implicit.VECTOR_BYTES == 64)
    # the rule alone (the kernels are compiled for this machine's vectors, whichever rule runs them)
    monkeypatch.setattr(gemm, "_strided_grad_input_implicit", lambda: not avx512)
    resnet = make_plan((30, 30), (3, 3), (2, 2), (1, 1), (14, 14))  # ResNet's 3x3/2, 128 -> 256
    phases = make_plan((34, 34), (4, 4), (2, 2), (1, 1), (16, 16))  # DCGAN's 4x4/2, 16x16 outputs
    assert gemm.strategy(128, 256, resnet, "grad_input", n=8) == ("cols" if avx512 else "implicit")
    assert gemm.strategy(64, 128, phases, "grad_input", n=8) == ("flipped" if avx512 else "implicit")
    same = make_plan((58, 58), (3, 3), (1, 1), (1, 1), (56, 56))
    assert gemm.strategy(64, 64, same, "grad_input", n=8) == "flipped"
    small = make_plan((30, 30), (2, 2), (2, 2), (1, 1), (15, 15))  # 16 channels x 4 taps: 64 rows, too few
    assert 16 * 4 < gemm.IMPLICIT_GRAD_INPUT_OTHER_MIN_ROWS
    assert gemm.strategy(16, 32, small, "grad_input", n=8, flip=False) == "cols"
    x = rng.standard_normal((2, 16, 13, 12))
    w = rng.standard_normal((24, 16, 3, 3))
    y = CF.conv(x, w, stride=2, padding=1)
    gy = rng.standard_normal(y.shape)
    plan = make_plan((15, 14), (3, 3), (2, 2), (1, 1), y.shape[2:])
    assert gemm.strategy(16, 24, plan, "grad_input", n=2) == ("cols" if avx512 else "implicit")
    gx, _, _ = CF.conv_backward(gy, x, w, stride=2, padding=1)
    assert max_rel_err(gx, _torch_grads(gy, x, w, stride=2, padding=1)[0]) < 1e-12


@pytest.mark.parametrize("vector_bytes, mr, nr", [(64, 4, 6), (32, 4, 3), (32, 2, 5)])
@pytest.mark.parametrize("kc", [1, 13, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dot_microkernel_for_every_register_width(vector_bytes, mr, nr, kc, dtype, rng):
    """The tile of dot products (the 1-D weight gradients'), as built for AVX-512 (4 x 6) and for 256-bit
    machines (4 x 3), whichever this machine runs: ``C += A @ B^T`` over ``kc`` steps, whole vectors and a
    masked tail, on rows at arbitrary offsets."""
    from numba import njit

    from convlayer.engine.implicit import make_dot_microkernel

    dk = make_dot_microkernel(mr, nr, vector_bytes)

    @njit
    def tile(a, arows, b, brows, c, crows, kc):
        dk(a, 1, arows, b, 2, brows, c, 3, crows, kc)

    a = rng.standard_normal(400).astype(dtype)
    b = rng.standard_normal(600).astype(dtype)
    arows = rng.permutation(300)[:mr].astype(np.int64)
    brows = rng.permutation(500)[:nr].astype(np.int64)
    crows = (rng.permutation(8)[:mr] * nr).astype(np.int64)
    c = rng.standard_normal(3 + 8 * nr).astype(dtype)
    amat = np.array([a[1 + r:1 + r + kc] for r in arows])
    bmat = np.array([b[2 + r:2 + r + kc] for r in brows])
    expected = c.copy()
    for i in range(mr):
        expected[3 + crows[i]:3 + crows[i] + nr] += amat[i] @ bmat.T
    tile(a, arows, b, brows, c, crows, kc)
    assert max_rel_err(c, expected) < (1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("vector_bytes, mr, nv, prefetch, steps_table",
                         [(32, 4, 2, 0, False), (32, 6, 2, 0, False), (64, 8, 2, 0, False), (64, 3, 2, 0, False),
                          (32, 4, 3, 0, False), (32, 4, 3, 8, False), (64, 8, 3, 8, False), (64, 6, 4, 0, False),
                          (64, 8, 2, 0, True), (64, 6, 4, 0, True), (64, 24, 1, 0, True), (32, 6, 2, 0, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_microkernel_tile_for_every_register_width(vector_bytes, mr, nv, prefetch, steps_table, dtype, rng):
    """The LLVM tile of the implicit GEMM, as built for AVX-512 and for 256-bit machines, on tables of rows
    at arbitrary offsets, overwriting and accumulating; prefetching changes no result. With ``steps_table``
    (the weight gradient's and the channels-along-vectors forward's tiles, whose loop is not unrolled), the
    steps of ``A`` from a table of arbitrary offsets instead of a stride."""
    from numba import njit

    from convlayer.engine.implicit import make_microkernel

    width = vector_bytes // np.dtype(dtype).itemsize * nv
    mk = make_microkernel(mr, nv, vector_bytes, prefetch, steps_table)

    @njit
    def tile(a, arows, astride, b, brows, c, crows, kc, beta):
        mk(a, 1, arows, astride, b, 2, brows, 1, c, 3, crows, kc, beta)

    kc = 13
    a = rng.standard_normal(400).astype(dtype)
    b = rng.standard_normal(2000).astype(dtype)
    arows = rng.permutation(100)[:mr].astype(np.int64)
    brows = rng.permutation(1000)[:kc + 1].astype(np.int64)  # step s reads brows[1 + s]
    crows = (rng.permutation(max(8, mr))[:mr] * width).astype(np.int64)
    c = rng.standard_normal(3 + max(8, mr) * width).astype(dtype)
    steps = rng.permutation(250)[:kc].astype(np.int64)  # step s of A at offset steps[s]
    for astride, beta in ((1, False), (7, True)):
        at = steps + astride if steps_table else np.arange(kc) * astride
        expected = c.copy()
        amat = np.array([[a[1 + arows[i] + at[s]] for s in range(kc)] for i in range(mr)])
        bmat = np.array([b[2 + brows[1 + s]:2 + brows[1 + s] + width] for s in range(kc)])
        for i in range(mr):
            row = expected[3 + crows[i]:3 + crows[i] + width]
            row[...] = (row if beta else 0) + amat[i] @ bmat
        tile(a, arows, at if steps_table else astride, b, brows, c, crows, kc, beta)
        assert max_rel_err(c, expected) < (1e-6 if dtype == np.float32 else 1e-14)
