"""Optimizers and learning-rate schedules.

Optimizers update :class:`~convlayer.layers.Parameter` objects in place
from their accumulated ``grad``; call ``zero_grad`` between steps (the
training loop does).
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry import check_bool, check_int, check_real

__all__ = ["SGD", "Adam", "AdamW", "StepLR", "CosineLR"]


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimize")
        for i, p in enumerate(self.params):
            if not (hasattr(p, "value") and hasattr(p, "grad")):  # a Parameter, or anything that holds both
                raise TypeError(f"{type(self).__name__}: params[{i}] is a {type(p).__name__}, not a Parameter (a "
                                "layer's parameters() gives them)")
        self.lr = check_real(type(self).__name__, "lr", lr)
        if self.lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr={lr!r} must be > 0")

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and (L2) weight decay, as PyTorch's."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        momentum = check_real("SGD", "momentum", momentum)
        weight_decay = check_real("SGD", "weight_decay", weight_decay)
        nesterov = check_bool("SGD", "nesterov", nesterov)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum={momentum} and weight_decay={weight_decay} must be >= 0")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self._velocity = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            g = p.grad + self.weight_decay * p.value if self.weight_decay else p.grad
            if self.momentum:
                v = self._velocity[i]
                v = g.copy() if v is None else self.momentum * v + g
                self._velocity[i] = v
                g = g + self.momentum * v if self.nesterov else v
            p.value -= (self.lr * g).astype(p.value.dtype, copy=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015); ``weight_decay`` adds an L2 term to the gradient, as PyTorch's Adam."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        name = type(self).__name__
        if not isinstance(betas, (tuple, list)):
            raise TypeError(f"{name}: betas must be a pair of numbers, got {type(betas).__name__} {betas!r}")
        if len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair of numbers, got {len(betas)}: {tuple(betas)!r}")
        self.b1, self.b2 = (check_real(name, f"betas[{i}]", b) for i, b in enumerate(betas))
        eps, weight_decay = check_real(name, "eps", eps), check_real(name, "weight_decay", weight_decay)
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1) or not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"{name}: betas={tuple(betas)} must be in [0, 1), eps={eps} > 0 and "
                             f"weight_decay={weight_decay} >= 0")
        self.eps, self.weight_decay = eps, weight_decay
        self._m = [np.zeros_like(p.value) for p in self.params]
        self._v = [np.zeros_like(p.value) for p in self.params]
        self._t = 0

    def step(self):
        self._t += 1
        c1 = 1 - self.b1 ** self._t
        c2 = 1 - self.b2 ** self._t
        for p, m, v in zip(self.params, self._m, self._v):
            g = p.grad
            if self.weight_decay and not self.decoupled:
                g = g + self.weight_decay * p.value
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            if self.weight_decay and self.decoupled:
                p.value -= (self.lr * self.weight_decay) * p.value
            p.value -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019); default ``weight_decay=0.01``."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    unit = "epoch"

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.optimizer, self.step_size = optimizer, check_int("StepLR", "step_size", step_size, 1)
        self.gamma = check_real("StepLR", "gamma", gamma)
        if self.gamma <= 0:
            raise ValueError(f"StepLR: gamma={gamma!r} must be > 0 (the learning rate's factor every step_size "
                             "epochs)")
        self.base_lr = optimizer.lr

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)

    def set(self, t: int) -> None:
        self.optimizer.lr = self.lr_at(t)


class CosineLR:
    """Cosine decay from the initial rate to ``min_lr`` over ``total_steps`` (``unit``: "step" = batch, or "epoch")."""

    def __init__(self, optimizer, total_steps, min_lr=0.0, unit="step"):
        if unit not in ("step", "epoch"):
            raise ValueError(f"CosineLR: unit={unit!r} must be 'step' or 'epoch'")
        self.optimizer, self.total = optimizer, check_int("CosineLR", "total_steps", total_steps, 1)
        self.min_lr = check_real("CosineLR", "min_lr", min_lr)
        self.unit = unit
        self.base_lr = optimizer.lr
        if not 0 <= self.min_lr <= self.base_lr:
            raise ValueError(f"CosineLR: min_lr={min_lr!r} must be in [0, lr={self.base_lr!r}] (the rate it decays "
                             "to)")

    def lr_at(self, step: int) -> float:
        t = min(step, self.total) / self.total
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def set(self, t: int) -> None:
        self.optimizer.lr = self.lr_at(t)
