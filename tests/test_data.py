import gzip

import numpy as np
import pytest

from convlayer.data import load_mnist, load_raw, preprocess, read_idx, write_idx
from convlayer.data.batching import batches
from convlayer.data.mnist import BUNDLED_DIR


def test_idx_round_trip(tmp_path, rng):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
        for name in ("a.idx", "a.idx.gz"):
            write_idx(tmp_path / name, a)
            b = read_idx(tmp_path / name)
            assert b.dtype == np.dtype(dtype) and np.array_equal(a, b)


def test_idx_errors(tmp_path):
    good = tmp_path / "good.idx"
    write_idx(good, np.arange(12, dtype=np.uint8).reshape(3, 4))
    raw = good.read_bytes()
    cases = {
        "truncated.idx": (raw[:-1], "IDX data truncated: shape \\(3, 4\\) needs 12 bytes, found 11"),
        "trailing.idx": (raw + b"x", "has trailing bytes"),
        "magic.idx": (b"\x01" + raw[1:], "not an IDX file"),
        "code.idx": (raw[:2] + b"\x07" + raw[3:], "unknown IDX type code 0x07"),
        "header.idx": (raw[:6], "truncated IDX header"),
        "gz.idx.gz": (gzip.compress(raw)[:-6], "corrupted or truncated gzip data"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=match):
            read_idx(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        read_idx(tmp_path / "missing.idx")
    with pytest.raises(ValueError, match="does not match the expected"):
        read_idx(good, sha256="0" * 64)


def test_bundled_mnist_is_verified_and_shaped():
    x, y = load_mnist("test")
    assert x.shape == (10000, 1, 32, 32) and x.dtype == np.float32
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    assert np.isclose(x.min(), -0.1) and np.isclose(x.max(), 1.175)
    assert np.all(x[:, :, :2] == np.float32(-0.1))  # padded with background
    images, labels = load_raw("train")
    assert images.shape == (60000, 28, 28) and labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert (BUNDLED_DIR / "SHA256SUMS").is_file()


def test_data_dir_with_corrupted_file(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{name}.gz").write_bytes((BUNDLED_DIR / f"{name}.gz").read_bytes())
    sums = (BUNDLED_DIR / "SHA256SUMS").read_text()
    (tmp_path / "SHA256SUMS").write_text(sums)
    x, y = load_mnist("test", data_dir=tmp_path)
    assert len(x) == 10000
    labels = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    flipped = labels[:100] + bytes([labels[100] ^ 1]) + labels[101:]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(flipped))
    with pytest.raises(ValueError, match="SHA-256 .* does not match"):
        load_mnist("test", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split='val' must be"):
        load_mnist("val")


@pytest.mark.parametrize("call, error, message", [
    (lambda: preprocess(np.zeros((2, 28, 28), np.uint8), pad=-1), ValueError, "preprocess: pad=-1 must be >= 0"),
    (lambda: preprocess(np.zeros((2, 28, 28), np.uint8), pad=2.0), TypeError, "pad must be an int, got float 2.0"),
    (lambda: preprocess(np.zeros(5, np.uint8)), ValueError, r"images must be \(N, H, W\), got shape \(5,\)"),
    (lambda: preprocess(np.zeros((2, 28, 28), np.uint8), dtype=np.int32), TypeError,
     "dtype must be float32 or float64, got int32"),
    (lambda: list(batches(10, 0)), ValueError, "batches: batch_size=0 must be >= 1"),
    (lambda: list(batches(-3, 2)), ValueError, "n=-3 must be >= 0"),
])
def test_preprocess_and_batches_name_bad_arguments(call, error, message):
    """Numpy's own messages (a negative pad, a 1-D array) or a silent wrong answer (an int dtype truncated the
    scaled pixels to -1, 0 and 1) before."""
    with pytest.raises(error, match=message):
        call()


def test_preprocess_scales_and_pads(rng):
    images = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    for dtype in (np.float32, "float64"):
        x = preprocess(images, pad=2, dtype=dtype)
        assert x.shape == (3, 1, 32, 32) and x.dtype == np.dtype(dtype)
        # float32 rounding: a few steps of 1.2e-7 on values up to 1.175
        np.testing.assert_allclose(x[:, 0, 2:-2, 2:-2], -0.1 + images * (1.275 / 255), rtol=0, atol=4e-7)
        assert np.all(x[:, 0, :2] == np.asarray(-0.1, dtype=dtype))
