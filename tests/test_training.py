import numpy as np
import pytest
import torch

from convlayer import layers as L
from convlayer.layers import Parameter
from convlayer.training import SGD, Adam, AdamW, CosineLR, StepLR, evaluate, fit, mse, softmax_cross_entropy


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
    with pytest.raises(ValueError, match="epochs=0"):
        fit(net, x, y, optimizer=SGD(net.parameters()), epochs=0, progress=False)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        SGD(net.parameters(), nesterov=True)
