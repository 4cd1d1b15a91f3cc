import json
import os
import struct

import numpy as np
import pytest

from convlayer import io
from convlayer import layers as L
from convlayer.models import lenet5


def _model():
    L.seed(0)
    return L.Sequential([L.Conv2d(1, 3, 3, padding="same", padding_mode="reflect"), L.BatchNorm(3), L.ReLU(),
                         L.MaxPool(2, 2), L.Flatten(), L.Dropout(0.1, seed=1), L.Linear(12, 2)])


def test_round_trip(tmp_path, rng):
    model = _model().eval()
    model.layers[1].running_mean[:] = [1, 2, 3]
    path = tmp_path / "m.safetensors"
    io.save(model, path, extra={"accuracy": 0.5})
    loaded = io.load(path)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert io.read_metadata(path)["extra"] == {"accuracy": 0.5}
    assert not loaded.training
    lenet = lenet5()
    io.save(lenet, path)
    assert io.load(path).num_parameters() == 60850


def test_round_trip_keeps_the_padding_value(tmp_path, rng):
    """A constant padding of another value than 0 survives the file (it is in the architecture, not a tensor)."""
    model = L.Sequential([L.Conv2d(1, 2, 3, padding=1, padding_value=0.75),
                          L.DepthwiseConv(2, 2, 3, padding=((1, 0), (2, 1)), padding_value=-2.0),
                          L.SeparableConv(2, 2, 3, 3, padding="same", padding_value=1.5)])
    path = tmp_path / "m.safetensors"
    io.save(model, path)
    loaded = io.load(path)
    assert [layer.padding_value for layer in loaded.layers[:2]] == [0.75, -2.0]
    x = rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def _header(data):
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n])


def _rewrite(data, header):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    n, _ = _header(data)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def test_corrupted_and_hostile_files(tmp_path):
    path = tmp_path / "m.safetensors"
    io.save(_model(), path)
    data = path.read_bytes()
    n, header = _header(data)
    bad = {}
    bad["truncated"] = (data[: len(data) // 2], "corrupted tensor data|truncated")
    bad["tiny"] = (data[:5], "not a model file")
    bad["garbage"] = (b"\xff" * 64, "not a safetensors model file or truncated")
    h = json.loads(json.dumps(header))
    h["__metadata__"]["format"] = "other"
    bad["format"] = (_rewrite(data, h), "not a convlayer model file")
    h = json.loads(json.dumps(header))
    arch = json.loads(h["__metadata__"]["architecture"])
    arch["config"]["layers"][0]["type"] = "builtins.eval"
    h["__metadata__"]["architecture"] = json.dumps(arch)
    bad["type"] = (_rewrite(data, h), "unknown layer type 'builtins.eval'")
    h = json.loads(json.dumps(header))
    arch = json.loads(h["__metadata__"]["architecture"])
    arch["config"]["layers"][0]["config"]["out_channels"] = 4
    h["__metadata__"]["architecture"] = json.dumps(arch)
    bad["shape"] = (_rewrite(data, h), "weights do not match the architecture")
    h = json.loads(json.dumps(header))
    arch = json.loads(h["__metadata__"]["architecture"])
    arch["config"]["layers"][6]["config"]["in_features"] = 2**40
    h["__metadata__"]["architecture"] = json.dumps(arch)
    bad["huge"] = (_rewrite(data, h), "over the memory budget")
    h = json.loads(json.dumps(header))
    h["__metadata__"]["architecture"] = "{not json"
    bad["json"] = (_rewrite(data, h), "corrupted architecture metadata")
    h = json.loads(json.dumps(header))
    h["__metadata__"]["architecture"] = "[" * 100_000 + "]" * 100_000  # past the JSON decoder's recursion limit
    bad["deep"] = (_rewrite(data, h), "corrupted architecture metadata")
    deep = b"[" * 50_000 + b"]" * 50_000
    bad["deep header"] = (struct.pack("<Q", len(deep)) + deep + data[8 + n:], "corrupted header")
    for name, (content, match) in bad.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(content)
        with pytest.raises(ValueError, match=match):
            io.load(p)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        io.load(tmp_path / "missing.safetensors")


def test_save_refuses_weights_that_load_would_refuse(tmp_path):
    """A model whose weights hold NaN (a diverged run) is not written, and an older file stays readable: load
    refuses non-finite tensors, so the saved file could never have been read back."""
    path = tmp_path / "m.safetensors"
    model = _model()
    io.save(model, path)
    model.layers[0].weight.value[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"save: '0.weight' holds NaN or inf; a model file holds finite weights"):
        io.save(model, path)
    io.load(path)  # the older file, intact


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    io.save(_model(), path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save(lenet5(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind
