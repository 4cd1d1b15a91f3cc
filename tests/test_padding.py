import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convlayer import pad, pad_adjoint
from convlayer.padding import MODE_ALIASES, MODES

NUMPY = {"zeros": "constant", "reflect": "reflect", "symmetric": "symmetric", "circular": "wrap", "replicate": "edge"}


def test_mode_pictures():
    x = np.array([1.0, 2, 3, 4])  # a b c d
    assert pad(x, 3, "reflect", axes=0).tolist() == [4, 3, 2, 1, 2, 3, 4, 3, 2, 1]
    assert pad(x, 3, "symmetric", axes=0).tolist() == [3, 2, 1, 1, 2, 3, 4, 4, 3, 2]
    assert pad(x, 3, "circular", axes=0).tolist() == [2, 3, 4, 1, 2, 3, 4, 1, 2, 3]
    assert pad(x, 3, "replicate", axes=0).tolist() == [1, 1, 1, 1, 2, 3, 4, 4, 4, 4]
    assert pad(x, 3, "zeros", axes=0).tolist() == [0, 0, 0, 1, 2, 3, 4, 0, 0, 0]
    assert pad(x, 1, "constant", value=7.0, axes=0).tolist() == [7, 1, 2, 3, 4, 7]


@pytest.mark.parametrize("alias, canonical", sorted(MODE_ALIASES.items()))
def test_aliases(alias, canonical):
    x = np.arange(10.0).reshape(1, 1, 10)
    np.testing.assert_array_equal(pad(x, 4, alias), pad(x, 4, canonical))


@st.composite
def pad_case(draw):
    rank = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), *(draw(st.integers(1, 5)) for _ in range(rank)))
    pairs = tuple((draw(st.integers(0, 12)), draw(st.integers(0, 12))) for _ in range(rank))
    modes = tuple(draw(st.sampled_from(MODES)) for _ in range(rank))
    return shape, pairs, modes


@given(case=pad_case(), seed=st.integers(0, 2**16))
def test_matches_numpy_pad_and_adjoint(case, seed):
    """Pads larger than the input repeat the rule as numpy.pad does, with a mode per axis."""
    shape, pairs, modes = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    expected = x
    for i, ((lo, hi), mode) in enumerate(zip(pairs, modes)):
        width = [(0, 0)] * x.ndim
        width[2 + i] = (lo, hi)
        expected = np.pad(expected, width, mode=NUMPY[mode])
    before = x.copy()
    got = pad(x, pairs, modes)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(x, before)  # input not mutated
    g = rng.normal(size=got.shape)
    gx = pad_adjoint(g, pairs, modes, in_shape=shape)
    assert gx.shape == shape
    np.testing.assert_allclose(np.vdot(got, g), np.vdot(x, gx), rtol=1e-12, atol=1e-12)


def test_adjoint_folds_into_sources():
    g = np.ones(10)
    assert pad_adjoint(g, 3, "reflect", in_shape=(4,), axes=0).tolist() == [2, 3, 3, 2]
    assert pad_adjoint(g, 3, "circular", in_shape=(4,), axes=0).tolist() == [2, 3, 3, 2]
    assert pad_adjoint(g, 3, "zeros", in_shape=(4,), axes=0).tolist() == [1, 1, 1, 1]


def test_errors():
    with pytest.raises(ValueError, match="cannot pad an empty axis"):
        pad(np.zeros((1, 1, 0)), 1, "reflect")
    assert pad(np.zeros((1, 1, 0)), 1, "zeros").shape == (1, 1, 2)
    with pytest.raises(ValueError, match=r"mode='mirror' is not one of"):
        pad(np.zeros((1, 1, 3)), 1, "mirror")
    with pytest.raises(TypeError, match="strings such as 'same'"):
        pad(np.zeros((1, 1, 3)), "same")
    with pytest.raises(ValueError, match="padding must be >= 0"):
        pad(np.zeros((1, 1, 3)), -1)
    with pytest.raises(ValueError, match="over the memory budget"):
        pad(np.zeros((1, 1, 3)), 2**62)
    with pytest.raises(ValueError, match="has no spatial axes"):
        pad(np.zeros(3), 1)
