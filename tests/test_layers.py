"""Every layer's contract: output shape, parameter count, config round trip, gradients by finite differences."""

import json

import numpy as np
import pytest

import convlayer.layers as L
from convlayer.models import C3_TABLE, lenet5, lenet5_modern


def _f64(layer):
    """Cast a layer's parameters (recursively) to float64 for finite differences."""
    for p in layer.parameters():
        p.value = p.value.astype(np.float64)
        p.grad = np.zeros_like(p.value)
    for name in ("running_mean", "running_var"):
        if hasattr(layer, name):
            setattr(layer, name, getattr(layer, name).astype(np.float64))
    for child in layer.children().values():
        _f64(child)
    return layer


def check_layer(layer, input_shape, rng, n_params=None, eps=1e-6, train=True):
    """Output shape, parameters, config round trip and finite-difference gradients (float64)."""
    layer = _f64(layer)
    layer.train(train)
    x = rng.standard_normal(input_shape)
    y = layer.forward(x)
    assert y.shape == layer.output_shape(input_shape)
    if n_params is not None:
        assert layer.num_parameters() == n_params
    # config round trip through JSON
    spec = json.loads(json.dumps(L.layer_config(layer)))
    clone = _f64(L.layer_from_config(spec))
    assert L.layer_config(clone) == L.layer_config(layer)
    assert repr(layer)
    # gradients: loss = sum(r * y)
    r = rng.standard_normal(y.shape)
    layer.zero_grad()
    layer.forward(x)
    gx = layer.backward(r)
    assert gx.shape == x.shape

    def loss():
        if isinstance(layer, L.Dropout):
            layer._rng = np.random.default_rng(7)
        return float(np.sum(r * layer.forward(x)))

    if isinstance(layer, L.Dropout):
        layer._rng = np.random.default_rng(7)
        layer.forward(x)
        gx = layer.backward(r)
    v = rng.standard_normal(x.shape)
    x0 = x.copy()
    x[...] = x0 + eps * v
    up = loss()
    x[...] = x0 - eps * v
    down = loss()
    x[...] = x0
    num = (up - down) / (2 * eps)
    assert abs(num - np.vdot(gx, v)) <= 1e-6 * (1 + abs(num)), (num, np.vdot(gx, v))
    for name, p in layer.named_parameters():
        v = rng.standard_normal(p.value.shape)
        p0 = p.value.copy()
        p.value = p0 + eps * v
        up = loss()
        p.value = p0 - eps * v
        down = loss()
        p.value = p0
        num = (up - down) / (2 * eps)
        assert abs(num - np.vdot(p.grad, v)) <= 1e-6 * (1 + abs(num)), (name, num, np.vdot(p.grad, v))


CASES = [
    (lambda: L.Conv1d(3, 4, 5, stride=2, padding="causal", dilation=2), (2, 3, 17), 4 * 3 * 5 + 4),
    (lambda: L.Conv2d(4, 6, 3, padding="same", groups=2, padding_mode="reflect"), (2, 4, 7, 6), 6 * 2 * 9 + 6),
    (lambda: L.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), bias=False, padding_mode="circular", padding=1),
     (1, 2, 4, 5, 4), 3 * 2 * 12),
    (lambda: L.ConvNd(4, 2, 2, 2, padding="same", padding_mode="symmetric"), (1, 2, 3, 3, 3, 3), 2 * 2 * 16 + 2),
    (lambda: L.ConvTranspose2d(4, 2, 4, stride=2, padding=1, output_padding=1), (2, 4, 3, 4), 4 * 2 * 16 + 2),
    (lambda: L.ConvTranspose1d(2, 3, 3, stride=3, padding_mode="replicate", padding=1), (1, 2, 5), 2 * 3 * 3 + 3),
    (lambda: L.DepthwiseConv(2, 3, 3, depth_multiplier=2, stride=2, padding=1), (2, 3, 7, 7), 6 * 9 + 6),
    (lambda: L.SeparableConv(2, 3, 5, 3, padding="same"), (2, 3, 6, 6), 3 * 9 + 5 * 3 + 5),
    (lambda: L.Conv2d(3, 4, 3, padding=((2, 1), (0, 2)), padding_mode=("zeros", "reflect"), padding_value=0.5),
     (2, 3, 5, 6), 4 * 3 * 9 + 4),
    (lambda: L.DepthwiseConv(1, 3, 3, padding="same", padding_value=-1.25), (2, 3, 7), 3 * 3 + 3),
    (lambda: L.SeparableConv(2, 3, 5, 3, padding="same", padding_value=2.0), (2, 3, 6, 6), 3 * 9 + 5 * 3 + 5),
    (lambda: L.ConnectionTableConv(2, 6, [list(t) for t in C3_TABLE], 5), (2, 6, 14, 14), 1516),
    (lambda: L.MaxPool(2, 3, 2, padding=1, ceil_mode=True), (2, 3, 7, 8), 0),
    (lambda: L.AvgPool(1, 3, 2, padding="same", count_include_pad=False), (2, 3, 9), 0),
    (lambda: L.GlobalMaxPool(), (2, 3, 4, 5), 0),
    (lambda: L.GlobalAvgPool(), (2, 3, 4, 5), 0),
    (lambda: L.Subsampling(2, 6, 2), (2, 6, 8, 8), 12),
    (lambda: L.Linear(7, 5), (3, 7), 40),
    (lambda: L.Flatten(), (2, 3, 2, 2), 0),
    (lambda: L.ReLU(), (3, 9), 0),
    (lambda: L.LeakyReLU(0.2), (3, 9), 0),
    (lambda: L.Tanh(), (3, 9), 0),
    (lambda: L.ScaledTanh(), (3, 9), 0),
    (lambda: L.Sigmoid(), (3, 9), 0),
    (lambda: L.Softmax(), (3, 9), 0),
    (lambda: L.BatchNorm(3), (4, 3, 5, 2), 6),
    (lambda: L.BatchNorm(5), (6, 5), 10),
    (lambda: L.Dropout(0.3, seed=1), (4, 8), 0),
    (lambda: L.Sequential([L.Conv2d(2, 3, 3), L.ReLU(), L.Flatten(), L.Linear(12, 2)]), (2, 2, 4, 4),
     3 * 2 * 9 + 3 + 12 * 2 + 2),
    (lambda: L.Residual(L.Sequential([L.Conv2d(3, 3, 3, padding=1), L.Tanh()])), (2, 3, 5, 5), 3 * 3 * 9 + 3),
    (lambda: L.Residual(L.Conv2d(2, 4, 3, stride=2, padding=1), L.Conv2d(2, 4, 1, stride=2)), (2, 2, 6, 6),
     4 * 2 * 9 + 4 + 4 * 2 + 4),
]


@pytest.mark.parametrize("make, shape, n_params", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_layer_contract(make, shape, n_params, rng):
    check_layer(make(), shape, rng, n_params)


def test_batchnorm_eval_mode_gradient_and_running_stats(rng):
    bn = L.BatchNorm(3)
    x = (rng.standard_normal((50, 3, 4)) * 3 + 2).astype(np.float32)
    for _ in range(200):  # running estimates converge as 1 - 0.9**steps
        bn.forward(x)
    np.testing.assert_allclose(bn.running_mean, x.mean(axis=(0, 2)), rtol=1e-3)
    np.testing.assert_allclose(bn.running_var, x.var(axis=(0, 2), ddof=1), rtol=1e-3)
    check_layer(bn, (4, 3, 5), rng, 6, train=False)


def test_lenet5_faithful_structure():
    net = lenet5()
    assert net.output_shape((1, 1, 32, 32)) == (1, 10)
    # C1 156, S2 12, C3 1516, S4 32, C5 48120, F6 10164, output 850 (the paper's counts; linear output)
    counts = [layer.num_parameters() for layer in net.layers if layer.num_parameters()]
    assert counts == [156, 12, 1516, 32, 48120, 10164, 850]
    c3 = net.layers[4]
    assert c3.weight.value.shape == (60, 5, 5)  # 60 connections, not 16 * 6 = 96
    assert lenet5_modern().num_parameters() == 61706


def test_lenet5_gradients(rng):
    check_layer(lenet5(), (2, 1, 32, 32), rng)


def test_dropout_eval_is_identity(rng):
    d = L.Dropout(0.5, seed=0).eval()
    x = rng.standard_normal((4, 4))
    np.testing.assert_array_equal(d.forward(x), x)
    d.train()
    y = d.forward(np.ones((1000, 10)))
    assert 0.4 < (y == 0).mean() < 0.6 and set(np.unique(y)) <= {0.0, 2.0}


def test_layer_errors():
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=4"):
        L.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="kernel_size=0 must be >= 1"):
        L.Conv2d(1, 1, 0)
    with pytest.raises(ValueError, match="is not one of"):
        L.Conv2d(1, 1, 3, padding="bogus")
    with pytest.raises(ValueError, match=r"Conv2d: padding_value=1 fills 'zeros' \('constant'\) padding, but "):
        L.Conv2d(1, 1, 3, padding=1, padding_mode="circular", padding_value=1)
    with pytest.raises(ValueError, match="DepthwiseConv: padding_value=inf must be finite"):
        L.DepthwiseConv(2, 1, 3, padding_value=float("inf"))
    with pytest.raises(TypeError, match="padding_value"):  # the adjoint of constant padding knows no value
        L.ConvTranspose2d(1, 1, 3, padding_value=1.0)
    with pytest.raises(ValueError, match=r"Linear: input shape must be \(N, 4\), got \(2, 5\)"):
        L.Linear(4, 2).forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="unknown layer type 'os.system'"):
        L.layer_from_config({"type": "os.system", "config": {}})
    with pytest.raises(ValueError, match="invalid config for layer Conv2d"):
        L.layer_from_config({"type": "Conv2d", "config": {"in_channels": 1, "evil": 2}})
    with pytest.raises(ValueError, match="over the memory budget"):
        L.Linear(2**40, 2**20)
    with pytest.raises(ValueError, match=r"table\[1\]=\[0, 0\] must list distinct"):
        L.ConnectionTableConv(2, 3, [[0], [0, 0]], 3)


def test_seed_makes_initialisation_reproducible():
    L.seed(3)
    a = lenet5().state_dict()
    L.seed(3)
    b = lenet5().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make, good, bad", [
    (lambda: L.Conv2d(3, 4, 3), (2, 3, 8, 8), [(2, 4, 8, 8), (2, 3, 8), (2, 3, 8, 8, 8)]),
    (lambda: L.ConvTranspose2d(3, 4, 3, stride=2), (2, 3, 5, 5), [(2, 2, 5, 5), (2, 3, 5)]),
    (lambda: L.DepthwiseConv(1, 3, 3, depth_multiplier=2), (2, 3, 9), [(2, 6, 9), (2, 3, 9, 9)]),
    (lambda: L.SeparableConv(2, 3, 5, 3), (2, 3, 8, 8), [(2, 5, 8, 8), (2, 3, 8)]),
    (lambda: L.ConnectionTableConv(2, 6, C3_TABLE, 5), (2, 6, 14, 14), [(2, 16, 14, 14), (2, 6, 14)]),
    (lambda: L.MaxPool(2, 2), (2, 3, 8, 8), [(2, 3, 8), (2, 3, 8, 8, 8)]),
    (lambda: L.Subsampling(2, 6, 2), (2, 6, 8, 8), [(2, 3, 8, 8), (2, 6, 8)]),
    (lambda: L.GlobalAvgPool(), (2, 3, 8, 8), [(2, 3), (5,)]),
    (lambda: L.BatchNorm(3), (2, 3, 8), [(2, 4, 8), (2,)]),
    (lambda: L.Linear(12, 4), (2, 12), [(2, 11), (2, 12, 1)]),
    (lambda: lenet5(), (1, 1, 32, 32), [(1, 3, 32, 32), (1, 1, 32), (2, 1, 32, 32, 5)]),
])
def test_output_shape_rejects_what_forward_cannot_take(make, good, bad, rng):
    """``output_shape`` answers for the inputs the layer takes and raises ``ValueError`` for the others (a wrong
    channel count or number of axes) instead of a shape: ``convlayer info --input-shape 1 3 32 32`` on a one-channel
    LeNet-5 once printed its layers' shapes and FLOPs."""
    layer = make()
    assert layer.output_shape(good) == layer.forward(rng.standard_normal(good).astype(np.float32)).shape
    for shape in bad:
        with pytest.raises(ValueError, match="input shape must be"):
            layer.output_shape(shape)


def test_load_state_dict_checks_every_entry_before_copying_any(rng):
    """A state with one bad entry (wrong shape, not an array, not numbers) raises and leaves the model as it
    was: entries before the bad one were once copied in already."""
    net = lenet5_modern()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    names = list(before)
    for bad, error in [(np.ones((1, 2)), ValueError), ([1.0, 2.0], TypeError), (np.array(["a"] * 6), TypeError)]:
        state = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in before.items()}
        state[names[-1]] = bad
        with pytest.raises(error, match=repr(names[-1])):
            net.load_state_dict(state)
        assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())
    state = {k: rng.standard_normal(v.shape) for k, v in before.items()}  # float64 arrays: cast on the copy
    net.load_state_dict(state)
    assert all(np.array_equal(v, state[k].astype(v.dtype)) for k, v in net.state_dict().items())


def test_residual_checks_its_branches():
    """Branches whose outputs differ are an error from ``output_shape`` as from ``forward`` (``output_shape``
    once answered with the body's shape); a body that is not a layer is a TypeError when the block is built."""
    block = L.Residual(L.Conv2d(4, 6, 3, padding=1))
    for call in (lambda: block.output_shape((2, 4, 8, 8)), lambda: block.forward(np.zeros((2, 4, 8, 8), np.float32))):
        with pytest.raises(ValueError, match=r"body output \(2, 6, 8, 8\) and shortcut output \(2, 4, 8, 8\) differ"):
            call()
    assert L.Residual(L.Conv2d(4, 6, 3, padding=1), L.Conv2d(4, 6, 1)).output_shape((2, 4, 8, 8)) == (2, 6, 8, 8)
    with pytest.raises(TypeError, match="Residual: body must be a Layer, got int"):
        L.Residual(5)
    with pytest.raises(TypeError, match="Residual: shortcut must be a Layer or None, got str"):
        L.Residual(L.ReLU(), "identity")


EVERY_LAYER = [
    lambda: L.Conv2d(4, 4, 3), lambda: L.Conv1d(4, 4, 3), lambda: L.Conv3d(4, 4, 3), lambda: L.ConvNd(2, 4, 4, 3),
    lambda: L.ConvTranspose2d(4, 4, 3), lambda: L.ConvTranspose1d(4, 4, 3), lambda: L.ConvTranspose3d(4, 4, 3),
    lambda: L.ConvTransposeNd(2, 4, 4, 3), lambda: L.DepthwiseConv(2, 4, 3), lambda: L.SeparableConv(2, 4, 4, 3),
    lambda: L.ConnectionTableConv(2, 6, C3_TABLE, 5), lambda: L.MaxPool(2, 2), lambda: L.AvgPool(2, 2),
    lambda: L.GlobalAvgPool(), lambda: L.GlobalMaxPool(), lambda: L.Subsampling(2, 4, 2), lambda: L.Linear(4, 3),
    lambda: L.Flatten(), lambda: L.ReLU(), lambda: L.LeakyReLU(), lambda: L.Tanh(), lambda: L.ScaledTanh(),
    lambda: L.Sigmoid(), lambda: L.Softmax(), lambda: L.BatchNorm(4), lambda: L.Dropout(0.5),
    lambda: L.Sequential([L.ReLU()]), lambda: L.Residual(L.ReLU()),
]


def test_every_layer_type_is_in_the_backward_check():
    assert {type(make()).__name__ for make in EVERY_LAYER} == set(L.REGISTRY)


@pytest.mark.parametrize("make", EVERY_LAYER)
def test_backward_before_forward_names_the_layer(make):
    """Every layer type: ``backward`` with nothing saved by a ``forward`` is a ``RuntimeError`` naming the layer
    (it was an AttributeError on a missing attribute, or a dtype error on ``None``)."""
    layer = make()
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}: backward\\(\\) called before forward\\(\\)"):
        layer.backward(np.ones((2, 4, 6, 6), np.float32))


@pytest.mark.parametrize("make, shape, n_params", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_backward_rejects_a_gradient_of_another_shape(make, shape, n_params, rng):
    """A gradient of one image where the batch has two broadcast over the batch in most layers' arithmetic (a
    silent wrong answer); ``backward`` checks it against the last ``forward``'s output instead."""
    layer = make()
    y = layer.forward(rng.standard_normal(shape).astype(np.float32))
    wrong = np.ones((1 if y.shape[0] > 1 else 2, *y.shape[1:]), np.float32)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: grad_y has shape \({wrong.shape[0]}, .*, but the "
                                         rf"last forward's output has shape \({y.shape[0]}, "):
        layer.backward(wrong)
    assert layer.backward(np.ones_like(y)).shape == shape  # nothing was left half done


@pytest.mark.parametrize("make, name", [
    (lambda: L.Linear(3, 2), "Linear"), (lambda: L.BatchNorm(3), "BatchNorm"),
    (lambda: L.Subsampling(2, 3, 2), "Subsampling"),
])
def test_layers_with_parameters_check_the_dtype(make, name, rng):
    """As the convolution layers do: a float64 input on float32 parameters is a TypeError, not a silent upcast,
    and so is a float64 gradient, which would be rounded into the parameters' gradients."""
    layer = make()
    x = rng.standard_normal((2, 3, 4, 4) if name != "Linear" else (2, 3))
    with pytest.raises(TypeError, match=rf"{name}: input has dtype float64, the layer's parameters float32"):
        layer.forward(x)
    y = layer.forward(x.astype(np.float32))
    with pytest.raises(TypeError, match=rf"{name}: grad_y has dtype float64, the layer's parameters float32"):
        layer.backward(np.ones(y.shape))
    with pytest.raises(TypeError, match=rf"{name}: dtype must be float32 or float64, got int32"):
        type(layer)(*({"Linear": (3, 2), "BatchNorm": (3,), "Subsampling": (2, 3, 2)}[name]), dtype="int32")


def test_layer_argument_checks():
    with pytest.raises(ValueError, match=r"BatchNorm: eps=0 must be > 0"):
        L.BatchNorm(3, eps=0)
    with pytest.raises(TypeError, match=r"BatchNorm: eps must be a real number, got str '1e-5'"):
        L.BatchNorm(3, eps="1e-5")
    with pytest.raises(ValueError, match=r"BatchNorm: momentum=1.5 must be in \[0, 1\]"):
        L.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match=r"BatchNorm: momentum=nan must be finite"):
        L.BatchNorm(3, momentum=float("nan"))
    with pytest.raises(TypeError, match=r"Subsampling: channels must be an int, got str '6'"):
        L.Subsampling(2, "6", 2)
    with pytest.raises(ValueError, match=r"Subsampling: input shape must be \(N, 1, S1, S2\), got \(1, 6, 4, 4\)"):
        L.Subsampling(2, 1, 2).forward(np.ones((1, 6, 4, 4), np.float32))  # its one weight broadcast over six
    with pytest.raises(TypeError, match=r"Dropout: p must be a real number, got str '0.5'"):
        L.Dropout("0.5")  # accepted before, its config then holding a string
    with pytest.raises(TypeError, match=r"Dropout: seed must be an int, got str 'a'"):
        L.Dropout(0.5, seed="a")
    with pytest.raises(TypeError, match=r"LeakyReLU: negative_slope must be a real number, got str 'a'"):
        L.LeakyReLU("a")
    with pytest.raises(ValueError, match=r"ScaledTanh: slope=nan must be finite"):
        L.ScaledTanh(slope=float("nan"))
    with pytest.raises(TypeError, match=r"Softmax: axis must be an int, got float 1.5"):
        L.Softmax(1.5)  # truncated to 1 before
    assert L.Dropout(np.float32(0.25), seed=np.int64(3)).get_config() == {"p": 0.25, "seed": 3}
    for make, message in [
        (lambda: L.Conv2d(1, 1, 3, bias="no"), "Conv2d: bias must be a bool, got str 'no'"),  # a bias before
        (lambda: L.Linear(2, 2, bias=None), "Linear: bias must be a bool, got NoneType None"),
        (lambda: L.ConnectionTableConv(2, 2, [[0]], 3, bias=1), "ConnectionTableConv: bias must be a bool, got int 1"),
        (lambda: L.MaxPool(2, 2, ceil_mode="no"), "MaxPool: ceil_mode must be a bool, got str 'no'"),
        (lambda: L.AvgPool(2, 2, count_include_pad=0), "AvgPool: count_include_pad must be a bool, got int 0"),
        (lambda: L.MaxPool(2.0, 2), "MaxPool: rank must be an int, got float 2.0"),
    ]:
        with pytest.raises(TypeError, match=message):
            make()
    assert L.Conv2d(1, 1, 3, bias=np.bool_(False)).get_config()["bias"] is False  # NumPy's bools are bools
