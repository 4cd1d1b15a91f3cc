"""Losses: each returns ``(loss, grad)`` with ``grad`` the gradient w.r.t. the prediction."""

from __future__ import annotations

import numpy as np

__all__ = ["softmax_cross_entropy", "mse", "log_softmax", "softmax"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable ``log(softmax(logits))`` over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, fused with its gradient.

    Computing through ``log_softmax`` never takes the log of an underflowed
    probability; the gradient is ``(softmax - onehot) / N``.

    Returns
    -------
    loss : float
    grad : ndarray, same shape as ``logits``
    """
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits must be (N, classes), got shape {logits.shape}")
    labels = np.asarray(labels)
    if labels.shape != (logits.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"softmax_cross_entropy: labels must be {logits.shape[0]} integers, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"softmax_cross_entropy: labels must be in [0, {logits.shape[1]}), got "
                         f"{labels.min()}..{labels.max()}")
    n = logits.shape[0]
    logp = log_softmax(logits)
    rows = np.arange(n)
    loss = -logp[rows, labels].mean() if n else 0.0
    grad = np.exp(logp)
    grad[rows, labels] -= 1
    grad /= max(n, 1)
    return float(loss), grad.astype(logits.dtype, copy=False)


def mse(pred: np.ndarray, target: np.ndarray):
    """Mean squared error ``mean((pred - target)**2)`` and its gradient."""
    target = np.asarray(target, dtype=pred.dtype)
    if target.shape != pred.shape:
        raise ValueError(f"mse: target shape {target.shape} differs from prediction shape {pred.shape}")
    diff = pred - target
    return float(np.mean(diff * diff)) if diff.size else 0.0, (2.0 / max(diff.size, 1)) * diff
