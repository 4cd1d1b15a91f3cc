import numpy as np
import pytest
import torch

from convlayer import layers as L
from convlayer.layers import Parameter
from convlayer.training import (SGD, Adam, AdamW, CosineLR, StepLR, evaluate, fit, mse, predict, predict_proba,
                                softmax_cross_entropy)


def test_softmax_cross_entropy_matches_torch_and_is_stable(rng):
    logits = rng.standard_normal((7, 10)) * 5
    labels = rng.integers(0, 10, 7)
    loss, grad = softmax_cross_entropy(logits, labels)
    lt = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(lt, torch.tensor(labels))
    tl.backward()
    assert abs(loss - tl.item()) < 1e-12
    np.testing.assert_allclose(grad, lt.grad.numpy(), atol=1e-14)
    big = np.array([[1000.0, -1000.0, 0.0]])
    loss, grad = softmax_cross_entropy(big, np.array([1]))
    assert np.isfinite(loss) and abs(loss - 2000.0) < 1e-9 and np.isfinite(grad).all()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        softmax_cross_entropy(big, np.array([3]))


def test_mse(rng):
    p, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss, grad = mse(p, t)
    assert abs(loss - np.mean((p - t) ** 2)) < 1e-15
    np.testing.assert_allclose(grad, 2 * (p - t) / 12)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda ps: SGD(ps, lr=0.1), lambda ts: torch.optim.SGD(ts, lr=0.1)),
        (lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
         lambda ts: torch.optim.SGD(ts, lr=0.1, momentum=0.9, weight_decay=0.01)),
        (lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
         lambda ts: torch.optim.SGD(ts, lr=0.1, momentum=0.9, nesterov=True)),
        (lambda ps: Adam(ps, lr=0.01, weight_decay=0.1), lambda ts: torch.optim.Adam(ts, lr=0.01, weight_decay=0.1)),
        (lambda ps: AdamW(ps, lr=0.01), lambda ts: torch.optim.AdamW(ts, lr=0.01)),
    ],
)
def test_optimizers_match_torch(ours, theirs, rng):
    values = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    params = [Parameter(v.copy()) for v in values]
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    opt, topt = ours(params), theirs(tparams)
    for _ in range(5):
        grads = [rng.standard_normal(v.shape) for v in values]
        for p, tp, g in zip(params, tparams, grads):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_schedules():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    step = StepLR(opt, 2, 0.5)
    assert [step.lr_at(e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    cos = CosineLR(opt, 10, min_lr=0.1)
    assert cos.lr_at(0) == 1.0 and abs(cos.lr_at(10) - 0.1) < 1e-15 and abs(cos.lr_at(5) - 0.55) < 1e-15


def _toy(rng, n=400):
    x = rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].sum(axis=(1, 2)) > x[:, 0, 3:].sum(axis=(1, 2))).astype(np.int64)
    return x, y


def _net():
    return L.Sequential([L.Conv2d(1, 4, 3, padding=1), L.ReLU(), L.MaxPool(2, 2), L.Flatten(), L.Linear(36, 2)])


def test_fit_learns_and_is_reproducible(rng):
    x, y = _toy(rng)
    runs = []
    for _ in range(2):
        L.seed(1)
        net = _net()
        opt = Adam(net.parameters(), lr=0.01)
        hist = fit(net, x, y, optimizer=opt, epochs=30, batch_size=32, seed=5, progress=False,
                   schedule=CosineLR(opt, 30, unit="epoch"), validation=(x, y))
        runs.append((hist, net.state_dict()))
    (h1, s1), (h2, s2) = runs
    assert h1.epoch_loss == h2.epoch_loss
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert h1.epoch_loss[-1] < h1.epoch_loss[0] * 0.5
    assert evaluate(_reload(s1), x, y)["accuracy"] > 0.9


def _reload(state):
    net = _net()
    net.load_state_dict(state)
    return net


def test_fit_errors(rng):
    x, y = _toy(rng, 10)
    net = _net()
    with pytest.raises(ValueError, match="x has 10 samples but y has 9"):
        fit(net, x, y[:9], optimizer=SGD(net.parameters()), progress=False)
    with pytest.raises(ValueError, match="fit: epochs=0 must be >= 1"):
        fit(net, x, y, optimizer=SGD(net.parameters()), epochs=0, progress=False)
    with pytest.raises(TypeError, match="fit: epochs must be an int, got float 1.5"):  # range()'s error before
        fit(net, x, y, optimizer=SGD(net.parameters()), epochs=1.5, progress=False)
    with pytest.raises(TypeError, match="fit: batch_size must be an int, got str '8'"):
        fit(net, x, y, optimizer=SGD(net.parameters()), batch_size="8", progress=False)
    with pytest.raises(ValueError, match="predict: batch_size=0 must be >= 1"):  # range()'s error before
        predict(net, x, batch_size=0)
    with pytest.raises(ValueError, match="predict: batch_size=0 must be >= 1"):
        evaluate(net, x, y, batch_size=0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        SGD(net.parameters(), nesterov=True)
    for kwargs in (dict(lr=float("inf")), dict(lr=float("nan")), dict(lr=0), dict(betas=(0.9, 1.0)),
                   dict(eps=0.0), dict(weight_decay=-1.0)):
        with pytest.raises(ValueError, match="Adam: "):
            Adam(net.parameters(), **kwargs)


def test_optimizer_and_schedule_arguments(rng):
    """Each argument named, before any step: strings and NaN were compared or stored, and failed (or
    diverged) only later; a zero step size divided by zero at the first epoch; ``total_steps=0`` became 1."""
    params = _net().parameters()
    for make, exc, message in [
        (lambda: SGD(params, momentum="0.9"), TypeError, "SGD: momentum must be a real number, got str '0.9'"),
        (lambda: SGD(params, weight_decay=float("nan")), ValueError, "SGD: weight_decay=nan must be finite"),
        (lambda: SGD(params, momentum=0.9, nesterov="yes"), TypeError, "SGD: nesterov must be a bool, got str 'yes'"),
        (lambda: SGD([np.zeros(3)]), TypeError, r"SGD: params\[0\] is a ndarray, not a Parameter"),
        (lambda: SGD(params, lr="0.1"), TypeError, "SGD: lr must be a real number, got str '0.1'"),  # ValueError before
        (lambda: Adam(params, betas="ab"), TypeError, "Adam: betas must be a pair of numbers, got str 'ab'"),
        (lambda: Adam(params, betas=(0.9, 0.9, 0.9)), ValueError, "Adam: betas must be a pair of numbers, got 3"),
        (lambda: AdamW(params, eps="1e-8"), TypeError, "AdamW: eps must be a real number, got str '1e-8'"),
        (lambda: StepLR(SGD(params), step_size=0), ValueError, "StepLR: step_size=0 must be >= 1"),
        (lambda: StepLR(SGD(params), 2, gamma="a"), TypeError, "StepLR: gamma must be a real number, got str 'a'"),
        (lambda: StepLR(SGD(params), 2, gamma=0), ValueError, "StepLR: gamma=0 must be > 0"),
        (lambda: CosineLR(SGD(params), total_steps=0), ValueError, "CosineLR: total_steps=0 must be >= 1"),
        (lambda: CosineLR(SGD(params, lr=0.01), 10, min_lr=0.1), ValueError,
         r"CosineLR: min_lr=0.1 must be in \[0, lr=0.01\]"),
    ]:
        with pytest.raises(exc, match=message):
            make()
    assert CosineLR(SGD(params, lr=0.01), 10, min_lr=0.01).lr_at(5) == pytest.approx(0.01)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")  # the diverging run
def test_fit_and_evaluate_refuse_what_would_lose_the_model(rng):
    """No samples, or NaN in the inputs: a clear error before any update. A loss that turns non-finite
    (divergence) stops training before that batch's update, so the parameters stay as they were."""
    x, y = _toy(rng, 40)
    net = _net()
    with pytest.raises(ValueError, match="x and y are empty"):
        fit(net, x[:0], y[:0], optimizer=SGD(net.parameters()), progress=False)
    with pytest.raises(ValueError, match="x and y are empty"):
        evaluate(net, x[:0], y[:0])
    bad = x.copy()
    bad[3, 0, 2, 2] = np.nan
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="x holds 1 NaN or infinite values"):
        fit(net, bad, y, optimizer=SGD(net.parameters()), progress=False)
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())  # no update was made
    L.seed(0)
    net = _net()
    opt = SGD(net.parameters(), lr=1e30)  # the first update sends the logits to inf
    seen = []

    def loss_fn(out, yb):  # keeps a copy of the parameters each batch's loss was computed with
        seen.append({k: np.array(v, copy=True) for k, v in net.state_dict().items()})
        return softmax_cross_entropy(out, yb)

    with pytest.raises(FloatingPointError, match="the loss is (nan|inf) at batch 2 of epoch 1"):
        fit(net, x, y, optimizer=opt, batch_size=8, progress=False, loss_fn=loss_fn)
    assert len(seen) == 2 and not all(np.array_equal(v, seen[0][k]) for k, v in seen[1].items())
    assert all(np.array_equal(v, seen[1][k]) for k, v in net.state_dict().items())


def test_predict_on_no_samples_keeps_the_outputs_shape(rng):
    """An empty input gives an empty ``(0, classes)`` output (an empty batch runs through the layers; Flatten
    once failed on it), not a shapeless array that softmax cannot take."""
    net = _net()
    assert predict(net, np.zeros((0, 1, 6, 6), np.float32)).shape == (0, 2)
    assert predict_proba(net, np.zeros((0, 1, 6, 6), np.float32)).shape == (0, 2)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_fit_stops_on_non_finite_gradients_and_overflowing_updates(rng):
    """A gradient holding NaN stops fit before the update (the parameters unchanged); an update that overflows
    the parameters stops it right after, with an error saying so, instead of training on NaN."""
    x, y = _toy(rng, 16)
    net = _net()
    before = {k: v.copy() for k, v in net.state_dict().items()}

    def nan_grad(out, yb):
        loss, grad = softmax_cross_entropy(out, yb)
        grad[0, 0] = np.nan
        return loss, grad

    with pytest.raises(FloatingPointError, match="a gradient holds NaN or inf at batch 1 of epoch 1"):
        fit(net, x, y, optimizer=SGD(net.parameters()), batch_size=8, progress=False, loss_fn=nan_grad)
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())
    with pytest.raises(FloatingPointError, match="the update of batch 1 of epoch 1 made parameters infinite"):
        fit(net, x * 1e6, y, optimizer=SGD(net.parameters(), lr=1e36), batch_size=8, progress=False)
