"""Every bad input gets a clear error, raised before any large allocation; each message is pinned."""

import tracemalloc

import numpy as np
import pytest

import convlayer
import convlayer.functional as CF

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: CF.conv(X, np.zeros((6, 3, 3, 3), np.float32)), ValueError,
         r"conv: input has 4 channels, but weight of shape \(6, 3, 3, 3\) with groups=1 expects 3"),
        (lambda: CF.conv(X, np.zeros((6, 1, 3, 3), np.float32), groups=3), ValueError,
         r"conv: groups=3 must divide in_channels=4 \(input shape \(2, 4, 8, 8\)\)"),
        (lambda: CF.conv(X, np.zeros((5, 2, 3, 3), np.float32), groups=2), ValueError,
         r"conv: groups=2 must divide out_channels=5"),
        (lambda: CF.conv(X, W, stride=0), ValueError, r"conv: stride=0 must be >= 1"),
        (lambda: CF.conv(X, W, stride=(1, -2)), ValueError, r"conv: stride=\(1, -2\) must be >= 1"),
        (lambda: CF.conv(X, W, dilation=0), ValueError, r"conv: dilation=0 must be >= 1"),
        (lambda: CF.conv(X, W, groups=0), ValueError, r"conv: groups=0 must be >= 1"),
        (lambda: CF.conv(X, W, groups=1.0), TypeError, r"conv: groups must be an int, got float 1.0"),
        (lambda: CF.conv(X, W, stride=(1, 1, 1)), ValueError, r"stride=\(1, 1, 1\) must be an int or a sequence of 2"),
        (lambda: CF.conv(X, W, padding=-1), ValueError, r"conv: padding: padding must be >= 0, got \(-1, -1\)"),
        (lambda: CF.conv(X, W, padding="bogus"), ValueError, r"padding='bogus' on axis 0 is not one of"),
        (lambda: CF.conv(X, np.zeros((6, 4, 9, 3), np.float32)), ValueError,
         r"conv: kernel \(size 9, dilation 1, span 9\) is larger than the padded input \(size 8 \+ padding 0\+0 = 8\)"),
        (lambda: CF.conv(X, W, dilation=5), ValueError, r"span 11\) is larger than the padded input"),
        (lambda: CF.conv(X, np.zeros((6, 4, 3), np.float32)), ValueError,
         r"conv: input of shape \(2, 4, 8, 8\) has 4 dims; a 1-d op expects 3 .* or 2"),
        (lambda: CF.conv(X[0, 0], W), ValueError, r"input of shape \(8, 8\) has 2 dims; a 2-d op expects 4"),
        (lambda: CF.conv(X, W, bias=np.zeros(5, np.float32)), ValueError,
         r"conv: bias must have shape \(6,\) \(one per output channel\), got \(5,\)"),
        (lambda: CF.conv(X, W, bias=np.zeros((6, 1), np.float32)), ValueError, r"got \(6, 1\)"),
        (lambda: CF.conv(X, W, padding_mode="mirror"), ValueError, r"conv: padding_mode='mirror' is not one of"),
        (lambda: CF.conv(X, W, padding=1, padding_value=float("nan")), ValueError,
         r"conv: padding_value=nan must be finite"),
        (lambda: CF.conv(X, W, padding=1, padding_value="1"), TypeError,
         r"conv: padding_value must be a real number, got str '1'"),
        (lambda: CF.conv(X, W, padding=1, padding_value=True), TypeError,
         r"padding_value must be a real number, got bool"),
        (lambda: CF.conv(X, W, padding=1, padding_mode="reflect", padding_value=1), ValueError,
         r"conv: padding_value=1 fills 'zeros' \('constant'\) padding, but padding_mode=\('reflect', 'reflect'\) "
         r"has none"),
        (lambda: CF.conv_backward(np.zeros((2, 6, 8, 8), np.float32), X, W, padding=1, padding_value=-np.inf),
         ValueError, r"conv_backward: padding_value=-inf must be finite"),
        (lambda: convlayer.padding.pad(X, 1, value="a"), TypeError, r"pad: value must be a real number, got str 'a'"),
        (lambda: CF.conv(X, W, data_format="NHWC"), ValueError, r"data_format='NHWC' must be one of"),
        (lambda: CF.conv(X.astype(np.int64), W), TypeError, r"conv: input must have dtype float32 or float64, got int64"),
        (lambda: CF.conv(X.astype(bool), W), TypeError, r"input must have dtype float32 or float64, got bool"),
        (lambda: CF.conv(X.astype(np.complex128), W), TypeError, r"got complex128"),
        (lambda: CF.conv(X.astype(object), W), TypeError, r"got object"),
        (lambda: CF.conv(X, W.astype(np.float16)), TypeError, r"conv: weight must have dtype float32 or float64, got float16"),
        (lambda: CF.conv(X, W.astype(np.float64)), TypeError, r"arrays must share one dtype, got input float32, weight float64"),
        (lambda: CF.conv(X, np.zeros((6, 4), np.float32)), ValueError, r"weight of shape \(6, 4\) must have at least 3 dims"),
        (lambda: CF.conv_backward(np.zeros((2, 6, 5, 5), np.float32), X, W), ValueError,
         r"conv_backward: grad_y has shape \(2, 6, 5, 5\), but the op's output has shape \(2, 6, 6, 6\)"),
        # transposed
        (lambda: CF.conv_transpose(X, np.zeros((3, 2, 3, 3), np.float32)), ValueError,
         r"conv_transpose: input has 4 channels, but weight of shape \(3, 2, 3, 3\) expects 3"),
        (lambda: CF.conv_transpose(X, np.zeros((4, 2, 3, 3), np.float32), stride=2, output_padding=2), ValueError,
         r"output_padding=2 on spatial axis 0 must be smaller than stride \(2\) or dilation \(1\)"),
        (lambda: CF.conv_transpose(X, np.zeros((4, 2, 3, 3), np.float32), stride=2, output_size=(30, 17)), ValueError,
         r"conv_transpose: output_size 30 on spatial axis 0 is impossible; valid sizes .* are 17..18"),
        (lambda: CF.conv_transpose(X, np.zeros((4, 2, 3, 3), np.float32), padding=9), ValueError,
         r"output size .* is impossible; .* \(none: use less padding\)"),
        (lambda: CF.conv_transpose(X, np.zeros((4, 2, 3, 3), np.float32), padding="same", output_padding=1, stride=2),
         ValueError, r"output_padding cannot be used with padding='same'; use output_size"),
        (lambda: CF.conv_transpose(X, np.zeros((4, 2, 3, 3), np.float32), bias=np.zeros(4, np.float32)), ValueError,
         r"conv_transpose: bias must have shape \(2,\)"),
        (lambda: CF.separable_conv(X, np.zeros((8, 1, 3, 3), np.float32), np.zeros((5, 8, 3, 3), np.float32)),
         ValueError, r"separable_conv: pointwise weight must have shape \(C_out, C \* multiplier, 1, ...\), a 1x1 "
                     r"kernel, got \(5, 8, 3, 3\)"),
        (lambda: CF.separable_conv_backward(np.zeros((2, 5, 6, 6), np.float32), X, np.zeros((8, 1, 3, 3), np.float32),
                                            np.zeros((5, 8, 1, 2), np.float32)),
         ValueError, r"separable_conv_backward: pointwise weight must have shape .* got \(5, 8, 1, 2\)"),
        # pooling
        (lambda: CF.max_pool(X, 0), ValueError, r"max_pool: kernel_size=0 must be >= 1"),
        (lambda: CF.max_pool(X, 9), ValueError, r"max_pool: kernel \(size 9, .* larger than the padded input \(size 8"),
        (lambda: CF.avg_pool(X, 2, stride=0), ValueError, r"avg_pool: stride=0 must be >= 1"),
        (lambda: CF.max_pool(X, 2, ceil_mode="yes"), TypeError, r"max_pool: ceil_mode must be a bool, got str 'yes'"),
        (lambda: CF.max_pool(X, 2, return_indices=1), TypeError, r"max_pool: return_indices must be a bool, got int 1"),
        (lambda: CF.avg_pool(X, 2, count_include_pad="no"), TypeError,  # "no" counted as true before
         r"avg_pool: count_include_pad must be a bool, got str 'no'"),
        (lambda: CF.avg_pool_backward(np.zeros((2, 4, 4, 4), np.float32), X, 2, count_include_pad=None), TypeError,
         r"avg_pool_backward: count_include_pad must be a bool, got NoneType None"),
        (lambda: CF.max_pool(X.astype(np.int32), 2), TypeError, r"max_pool: input must have dtype float32 or float64"),
        (lambda: CF.max_pool(np.zeros(4), 2), ValueError, r"has no spatial axis"),
        (lambda: CF.max_pool_backward(np.zeros((2, 4, 3, 3)), X.astype(np.float64), 2), ValueError,
         r"grad_y has shape \(2, 4, 3, 3\), but the op's output has shape \(2, 4, 4, 4\)"),
    ],
)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: CF.conv(X, W, padding=2**62), r"conv: padded input of shape .* over the memory budget"),
        (lambda: CF.conv(X, W, padding=((0, 0), (2**40, 0))), r"over the memory budget"),
        (lambda: CF.max_pool(X, 2**32), r"span 4294967296\) is larger than the padded input"),
        (lambda: CF.max_pool(X, 2, padding=2**62), r"over the memory budget"),
        (lambda: CF.conv(X, W, stride=2**62, padding=1), None),  # huge stride is fine: one output
        (lambda: CF.conv_transpose(X, np.zeros((4, 2, 3, 3), np.float32), stride=2**40), r"over the memory budget"),
        (lambda: CF.pad(X, 2**62), r"pad: padded output .* over the memory budget"),
    ],
)
def test_absurd_parameters_fail_fast_without_allocating(call, match):
    tracemalloc.start()
    try:
        if match is None:
            call()
        else:
            with pytest.raises(ValueError, match=match):
                call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_memory_budget_is_configurable():
    x = np.zeros((1, 1, 64, 64), np.float32)
    w = np.zeros((8, 1, 3, 3), np.float32)
    with convlayer.memory_budget(20_000):
        with pytest.raises(ValueError, match=r"output of shape \(1, 8, 62, 62\) would take .* over the memory budget"):
            CF.conv(x, w)
    assert CF.conv(x, w).shape == (1, 8, 62, 62)
    with pytest.raises(ValueError, match="nbytes must be a positive int"):
        convlayer.set_memory_budget(0)


def test_inputs_are_not_mutated(rng):
    x = rng.standard_normal((2, 4, 7, 7))
    w = rng.standard_normal((6, 2, 3, 3))
    gy = rng.standard_normal((2, 6, 4, 4))
    copies = [a.copy() for a in (x, w, gy)]
    CF.conv(x, w, stride=2, padding=1, groups=2, padding_mode="reflect")
    CF.conv_backward(gy, x, w, stride=2, padding=1, groups=2, padding_mode="reflect")
    CF.max_pool_backward(rng.standard_normal((2, 4, 3, 3)), x, 2)
    for a, c in zip((x, w, gy), copies):
        np.testing.assert_array_equal(a, c)


def test_thread_knob_sets_and_restores():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with convlayer.num_threads(1):
        assert convlayer.get_num_threads() == 1
        assert all(n == 1 for n in blas_threads())
        x = np.ones((1, 2, 6, 6), np.float32)
        assert CF.conv(x, np.ones((2, 1, 3, 3), np.float32), groups=2).shape == (1, 2, 4, 4)
    assert blas_threads() == before
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        convlayer.set_num_threads(0)


def test_workspace_is_reused_then_released(rng):
    from convlayer.engine import gemm

    x = rng.standard_normal((2, 24, 9, 9)).astype(np.float32)
    w = rng.standard_normal((24, 24, 3, 3)).astype(np.float32)
    with gemm.force_strategy("cols"):
        y = CF.conv(x, w, padding=1)
        first = gemm._workspace.buf
        assert first is not None
        np.testing.assert_array_equal(CF.conv(x, w, padding=1), y)  # reused buffer, same numbers
        assert gemm._workspace.buf is first
        convlayer.release_workspace()
        assert gemm._workspace.buf is None
    for shape, dtype in (((3,), np.float64), ((1000, 7), np.float32), ((5, 3), np.uint8)):  # each a new buffer
        convlayer.release_workspace()
        assert gemm.workspace(shape, dtype).ctypes.data % gemm.ALIGNMENT == 0  # starts on a cache line


def test_cached_geometry_still_rejects_what_equals_a_valid_argument():
    """The geometry cache keys on repr: True == 1 and 1.0 == 1, yet both stay errors after a valid call."""
    x = np.zeros((1, 1, 5, 5), np.float32)
    w = np.zeros((1, 1, 3, 3), np.float32)
    CF.conv(x, w, stride=1)
    with pytest.raises(TypeError, match="stride must be an int or a sequence of 2 ints, got bool True"):
        CF.conv(x, w, stride=True)
    with pytest.raises(TypeError, match="got float 1.0"):
        CF.conv(x, w, stride=1.0)


def test_cached_geometry_rechecks_the_memory_budget():
    """A geometry resolved under a large budget is refused once the budget is lowered."""
    import convlayer

    x = np.zeros((2, 3, 40, 40), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    CF.conv(x, w, padding=1)
    with convlayer.memory_budget(1000):
        with pytest.raises(ValueError, match="memory budget"):
            CF.conv(x, w, padding=1)
