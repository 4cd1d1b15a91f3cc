"""Model files: safetensors with the architecture as JSON in the metadata.

* Tensors: every parameter and buffer under its dotted name
  (``"4.weight"``), in its own dtype.
* Metadata: ``format = "convlayer"``, ``format_version``, and
  ``architecture``: the JSON of :func:`convlayer.layers.layer_config`.

Loading never executes code and never unpickles: the file is parsed by
safetensors (a JSON header and raw little-endian buffers), layer types are
looked up in the closed registry of convlayer's own layers, and every
tensor must match the rebuilt model's names and shapes. Saving writes a
temporary file next to the target and renames it over the target only
when complete, so a failed save never leaves a half-written model in place
of a good one.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from .layers import Layer, layer_config, layer_from_config

__all__ = ["save", "load", "read_metadata", "MAX_FILE_BYTES"]

FORMAT = "convlayer"
FORMAT_VERSION = "1"
MAX_FILE_BYTES = 4 * 2**30
MAX_HEADER_BYTES = 16 * 2**20


def save(model: Layer, path, *, extra: dict | None = None) -> None:
    """Write ``model`` to ``path`` atomically (``extra``: JSON-able metadata such as metrics)."""
    if not isinstance(model, Layer):
        raise TypeError(f"save: model must be a convlayer Layer, got {type(model).__name__}")
    path = os.fspath(path)
    tensors = {name: np.ascontiguousarray(value) for name, value in model.state_dict().items()}
    for name, value in tensors.items():  # load refuses them: a file it cannot read back would lose the model
        if not np.isfinite(value).all():
            raise ValueError(f"save: {name!r} holds NaN or inf; a model file holds finite weights only "
                             f"(nothing was written to {path})")
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": json.dumps(layer_config(model)),
    }
    if extra:
        metadata["extra"] = json.dumps(extra)
    payload = _st_save(tensors, metadata=metadata)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path) -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit for a model file")
    if size < 8:
        raise ValueError(f"{path}: not a model file (only {size} bytes; truncated?)")
    with open(path, "rb") as fh:
        data = fh.read()
    header_len = int.from_bytes(data[:8], "little")
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise ValueError(f"{path}: not a safetensors model file or truncated (header length {header_len})")
    return data


def _metadata(path, data: bytes) -> dict:
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"{path}: corrupted header ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a convlayer model file (metadata format is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    out = dict(meta)
    try:
        out["architecture"] = json.loads(meta["architecture"])
        if "extra" in meta:
            out["extra"] = json.loads(meta["extra"])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: corrupted architecture metadata ({exc})") from exc
    return out


def read_metadata(path) -> dict:
    """The metadata of a model file (architecture and extras decoded from JSON), without building the model."""
    return _metadata(path, _read(path))


def load(path) -> Layer:
    """Rebuild the model saved in ``path`` and load its weights; the model is in eval mode.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a
    truncated, corrupted, oversized or hostile one (unknown layer types,
    bad configs, tensors that do not match the architecture).
    """
    data = _read(path)
    meta = _metadata(path, data)
    try:
        tensors = _st_load(data)
    except (SafetensorError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: corrupted tensor data ({exc})") from exc
    for name, value in tensors.items():
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise ValueError(f"{path}: tensor {name!r} is not finite floating point")
    try:
        model = layer_from_config(meta["architecture"])
    except RecursionError as exc:
        raise ValueError(f"{path}: architecture nested too deeply") from exc
    try:
        model.load_state_dict(tensors)
    except ValueError as exc:
        raise ValueError(f"{path}: weights do not match the architecture: {exc}") from exc
    return model.eval()
