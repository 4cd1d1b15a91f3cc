"""The training loop: ``fit``, ``evaluate``, ``predict``, with a tqdm progress bar."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..data.batching import batches
from ..geometry import check_int
from .losses import softmax, softmax_cross_entropy

__all__ = ["History", "fit", "evaluate", "predict"]


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run, and the loss of every batch."""

    epoch_loss: list = field(default_factory=list)
    epoch_accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    images_per_second: list = field(default_factory=list)
    batch_loss: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(vars(self))


def fit(model, x, y, *, optimizer, epochs=1, batch_size=64, schedule=None, validation=None, seed=0,
        progress=True, loss_fn=softmax_cross_entropy, on_epoch_end=None) -> History:
    """Train ``model`` on ``(x, y)`` with mini-batches shuffled by ``seed``.

    Parameters
    ----------
    model : Layer
    x, y : ndarray
        Inputs ``(N, ...)`` and integer labels ``(N,)`` (or targets for ``loss_fn``).
    optimizer : SGD, Adam or AdamW over ``model.parameters()``.
    epochs, batch_size : int
    schedule : StepLR or CosineLR, optional
    validation : (x_val, y_val), optional
        Evaluated after every epoch.
    seed : int
        Seeds the shuffling; with the same initial weights the run is reproducible.
    progress : bool
        Show a tqdm bar with loss, accuracy and images per second.
    on_epoch_end : callable(epoch, history), optional

    Returns
    -------
    History

    Raises
    ------
    ValueError
        Before any update: bad counts, ``x`` and ``y`` of different lengths
        or empty, ``x`` holding NaN or inf.
    FloatingPointError
        When a batch's loss or a gradient is not finite (before that
        batch's update, the parameters left as they were) or an update
        makes a parameter infinite or NaN (right after it).
    """
    check_int("fit", "epochs", epochs, 1)
    check_int("fit", "batch_size", batch_size, 1)
    if len(x) != len(y):
        raise ValueError(f"fit: x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("fit: x and y are empty: no samples to train on")
    if not np.isfinite(x).all():
        bad = np.size(x) - int(np.isfinite(x).sum())
        raise ValueError(f"fit: x holds {bad} NaN or infinite values; they would turn every parameter into NaN")
    rng = np.random.default_rng(seed)
    history = History()
    first = model.layers[0] if hasattr(model, "layers") and len(model.layers) else model
    saved = getattr(first, "input_grad", None)
    if saved is not None:
        first.input_grad = False  # nothing upstream of the data needs its gradient
    step = 0
    try:
        steps_per_epoch = -(-len(x) // batch_size)
        for epoch in range(epochs):
            if schedule is not None and schedule.unit == "epoch":
                schedule.set(epoch)
            model.train()
            start = time.perf_counter()
            seen = correct = 0
            total_loss = 0.0
            bar = tqdm(batches(len(x), batch_size, rng), total=steps_per_epoch, disable=not progress,
                       desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=True)
            for idx in bar:
                if schedule is not None and schedule.unit == "step":
                    schedule.set(step)
                xb, yb = x[idx], y[idx]
                optimizer.zero_grad()
                out = model.forward(xb)
                loss, grad = loss_fn(out, yb)
                if not math.isfinite(loss):  # stop before the update
                    raise FloatingPointError(f"fit: the loss is {loss} at {_batch(step, epoch, steps_per_epoch)}; "
                                             "training diverged (try a lower learning rate). The parameters are "
                                             "those from before that batch.")
                model.backward(grad)
                if not all(np.isfinite(p.grad).all() for p in optimizer.params):
                    raise FloatingPointError(f"fit: a gradient holds NaN or inf at "
                                             f"{_batch(step, epoch, steps_per_epoch)} (the loss was {loss}); the "
                                             "parameters are those from before that batch.")
                optimizer.step()
                if not all(np.isfinite(p.value).all() for p in optimizer.params):
                    raise FloatingPointError(f"fit: the update of {_batch(step, epoch, steps_per_epoch)} made "
                                             "parameters infinite or NaN; the learning rate is far too high for this "
                                             "model.")
                step += 1
                n = len(idx)
                seen += n
                total_loss += loss * n
                if out.ndim == 2 and np.asarray(yb).ndim == 1:
                    correct += int((out.argmax(axis=1) == yb).sum())
                history.batch_loss.append(loss)
                if progress:
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}",
                                    img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
            elapsed = time.perf_counter() - start
            history.epoch_loss.append(total_loss / max(seen, 1))
            history.epoch_accuracy.append(correct / max(seen, 1))
            history.lr.append(optimizer.lr)
            history.seconds.append(elapsed)
            history.images_per_second.append(seen / max(elapsed, 1e-9))
            if validation is not None:
                metrics = evaluate(model, *validation, batch_size=max(batch_size, 256), loss_fn=loss_fn)
                history.val_loss.append(metrics["loss"])
                history.val_accuracy.append(metrics["accuracy"])
                if progress:
                    tqdm.write(f"epoch {epoch + 1}: loss {history.epoch_loss[-1]:.4f}, "
                               f"train accuracy {history.epoch_accuracy[-1]:.4f}, "
                               f"validation accuracy {metrics['accuracy']:.4f}, "
                               f"{history.images_per_second[-1]:.0f} images/s")
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
    finally:
        if saved is not None:
            first.input_grad = saved
    model.eval()
    return history


def _batch(step: int, epoch: int, steps_per_epoch: int) -> str:
    """Where ``fit`` stopped, for its messages (formatted only when one is raised)."""
    return f"batch {step - epoch * steps_per_epoch + 1} of epoch {epoch + 1}"


def predict(model, x, batch_size=256, progress=False) -> np.ndarray:
    """Outputs of ``model`` in evaluation mode (logits for a classifier), in batches."""
    check_int("predict", "batch_size", batch_size, 1)
    model.eval()
    outs = [model.forward(x[i:i + batch_size])
            for i in tqdm(range(0, len(x), batch_size), disable=not progress, desc="predict", unit="batch")]
    return np.concatenate(outs) if outs else model.forward(x[:0])  # no samples: the outputs' shape, empty


def predict_proba(model, x, batch_size=256) -> np.ndarray:
    """Class probabilities (softmax of the logits)."""
    return softmax(predict(model, x, batch_size))


def evaluate(model, x, y, batch_size=256, loss_fn=softmax_cross_entropy, progress=False) -> dict:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in evaluation mode."""
    if len(x) != len(y):
        raise ValueError(f"evaluate: x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("evaluate: x and y are empty: no samples to evaluate")
    logits = predict(model, x, batch_size, progress)
    loss, _ = loss_fn(logits, y)
    accuracy = float((logits.argmax(axis=1) == y).mean()) if len(y) else 0.0
    return {"loss": loss, "accuracy": accuracy, "errors": int((logits.argmax(axis=1) != y).sum())}
