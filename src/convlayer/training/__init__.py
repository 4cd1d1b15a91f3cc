"""Losses, optimizers, schedules and the fit/evaluate/predict loop."""

from .losses import log_softmax, mse, softmax, softmax_cross_entropy
from .loop import History, evaluate, fit, predict, predict_proba
from .optim import SGD, Adam, AdamW, CosineLR, StepLR

__all__ = [
    "softmax_cross_entropy", "mse", "softmax", "log_softmax",
    "SGD", "Adam", "AdamW", "StepLR", "CosineLR",
    "History", "fit", "evaluate", "predict", "predict_proba",
]
