import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convlayer import geometry as G


def test_normalize_tuple_int_and_sequence():
    assert G.normalize_tuple(3, 2, "stride") == (3, 3)
    assert G.normalize_tuple([1, 2, 3], 3, "dilation") == (1, 2, 3)


@pytest.mark.parametrize(
    "value, exc, match",
    [
        ((1, 2), ValueError, r"stride=\(1, 2\) must be an int or a sequence of 3 ints .* got 2 values"),
        (True, TypeError, "stride must be an int"),
        ((1, 2.0, 3), TypeError, "must contain only ints"),
        (0, ValueError, r"stride=0 must be >= 1"),
        ("2", TypeError, "stride must be an int"),
    ],
)
def test_normalize_tuple_errors(value, exc, match):
    with pytest.raises(exc, match=match):
        G.normalize_tuple(value, 3, "stride", minimum=1)


@given(
    n=st.integers(1, 60), k=st.integers(1, 7), s=st.integers(1, 5), d=st.integers(1, 4), lower=st.booleans()
)
def test_same_gives_ceil_for_any_stride_and_dilation(n, k, s, d, lower):
    pads = G.same_padding(n, k, s, d, lower=lower)
    (out,) = G.conv_output_size((n,), (k,), (s,), (pads,), (d,))
    assert out == math.ceil(n / s)
    lo, hi = pads
    assert abs(hi - lo) <= 1
    assert (hi >= lo) if not lower else (lo >= hi)


def test_padding_strings():
    assert G.resolve_padding("valid", (10,), (3,)) == ((0, 0),)
    assert G.resolve_padding("full", (10,), (3,), (1,), (2,)) == ((4, 4),)
    assert G.resolve_padding("causal", (10,), (3,), (1,), (2,)) == ((4, 0),)
    assert G.resolve_padding("same", (10,), (4,)) == ((1, 2),)
    assert G.resolve_padding("same_lower", (10,), (4,)) == ((2, 1),)
    assert G.resolve_padding(("causal", (1, 2), 3), (9, 9, 9), (3, 3, 3)) == ((2, 0), (1, 2), (3, 3))


@given(n=st.integers(1, 40), k=st.integers(1, 6), d=st.integers(1, 3))
def test_causal_and_full_sizes(n, k, d):
    (pc,) = G.resolve_padding("causal", (n,), (k,), (1,), (d,))
    assert G.conv_output_size((n,), (k,), (1,), (pc,), (d,)) == (n,)
    (pf,) = G.resolve_padding("full", (n,), (k,), (1,), (d,))
    assert G.conv_output_size((n,), (k,), (1,), (pf,), (d,)) == (n + d * (k - 1),)


@pytest.mark.parametrize(
    "padding, exc, match",
    [
        ("bogus", ValueError, "is not one of"),
        (-1, ValueError, r"padding must be >= 0, got \(-1, -1\)"),
        (((1, -2),), ValueError, r"got \(1, -2\) on axis 0"),
        ((1, 2), ValueError, "one entry per spatial axis"),
        (1.5, TypeError, "padding must be an int"),
    ],
)
def test_padding_errors(padding, exc, match):
    with pytest.raises(exc, match=match):
        G.resolve_padding(padding, (10,), (3,))


def test_kernel_larger_than_padded_input_names_sizes():
    with pytest.raises(ValueError, match=r"span 5\) is larger than the padded input \(size 3 \+ padding 0\+1 = 4\)"):
        G.conv_output_size((3,), (5,), (1,), ((0, 1),), (1,))


@given(
    n=st.integers(1, 30), k=st.integers(1, 6), s=st.integers(1, 4), d=st.integers(1, 3),
    lo=st.integers(0, 4), hi=st.integers(0, 4), data=st.data(),
)
def test_transposed_size_inverts_conv_size(n, k, s, d, lo, hi, data):
    (smallest, largest), = G.conv_transpose_output_range((n,), (k,), (s,), ((lo, hi),), (d,))
    if smallest < 1:
        return
    op = data.draw(st.integers(0, max(s, d) - 1))
    (t,) = G.conv_transpose_output_size((n,), (k,), (s,), ((lo, hi),), (d,), (op,))
    assert t == smallest + op <= largest
    if op < s:  # every size reached with op < s maps back to n under the forward conv
        assert G.conv_output_size((t,), (k,), (s,), ((lo, hi),), (d,)) == (n,)
    assert G.output_padding_for_size(n, t, k, s, (lo, hi), d) == op


def test_output_padding_for_size_names_range():
    with pytest.raises(ValueError, match=r"valid sizes .* are 8\.\.9"):
        G.output_padding_for_size(4, 11, 4, 2, (1, 1))


@pytest.mark.parametrize("call, error, message", [
    (lambda: G.same_padding(5, 3, 0), ValueError, "same_padding: s=0 must be >= 1"),
    (lambda: G.same_padding(5, 0), ValueError, "same_padding: k=0 must be >= 1"),
    (lambda: G.same_padding(-5, 3), ValueError, "same_padding: n=-5 must be >= 0"),
    (lambda: G.same_padding(5, 3, d=1.0), TypeError, "same_padding: d must be an int, got float 1.0"),
    (lambda: G.padding_for_output_size(5, 5, 3, 0), ValueError, "padding_for_output_size: s=0 must be >= 1"),
    (lambda: G.output_padding_for_size(5, 9, 3, 0, (0, 0)), ValueError, "output_padding_for_size: s=0 must be >= 1"),
])
def test_size_functions_reject_sizes_that_are_not_sizes(call, error, message):
    """A zero stride was a ZeroDivisionError in ``same_padding``; a zero kernel or a negative input size gave
    a padding as if they were sizes."""
    with pytest.raises(error, match=message):
        call()


def test_transposed_output_padding_rule():
    with pytest.raises(ValueError, match="output_padding=2 on spatial axis 0 must be >= 0 and smaller than stride"):
        G.conv_transpose_output_size((4,), (3,), (2,), ((0, 0),), (1,), (2,))


@given(n=st.integers(1, 50), k=st.integers(1, 7), s=st.integers(1, 4), d=st.integers(1, 3), out=st.integers(1, 40))
def test_padding_for_output_size(n, k, s, d, out):
    try:
        lo, hi = G.padding_for_output_size(n, out, k, s, d)
    except ValueError:
        assert (n - d * (k - 1) - 1) // s + 1 > out or out < 1
        return
    assert G.conv_output_size((n,), (k,), (s,), ((lo, hi),), (d,)) == (out,)


def test_pool_ceil_mode_drops_window_starting_in_right_padding():
    # PyTorch: out = ceil((5 + 1 + 1 - 2)/2) + 1 = 4, but window 3 starts at 6 >= 5 + 1: dropped.
    assert G.pool_output_size((5,), (2,), (2,), ((1, 1),), (1,), ceil_mode=True) == (3,)
    assert G.pool_output_size((5,), (2,), (2,), ((1, 1),), (1,), ceil_mode=False) == (3,)
    assert G.pool_output_size((6,), (3,), (2,), ((0, 0),), (1,), ceil_mode=True) == (3,)


def test_receptive_field_lenet():
    # C1 5x5, S2 2/2, C3 5x5, S4 2/2, C5 5x5 sees the whole 32x32 input.
    layers = [
        {"kernel_size": 5}, {"kernel_size": 2, "stride": 2}, {"kernel_size": 5},
        {"kernel_size": 2, "stride": 2}, {"kernel_size": 5},
    ]
    rf = G.receptive_field(layers)
    assert rf == G.ReceptiveField(size=32, stride=4, offset=0)
    assert rf.span(0) == (0, 32)


def test_receptive_field_with_padding_and_dilation():
    rf = G.receptive_field([{"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "dilation": 2, "padding": 2}])
    assert rf == G.ReceptiveField(size=7, stride=1, offset=-3)
    with pytest.raises(ValueError, match="layer 0 has invalid geometry"):
        G.receptive_field([{"kernel_size": 0}])
