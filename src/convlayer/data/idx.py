"""Reader (and writer) for the IDX format of MNIST, gzipped or raw.

Layout: two zero bytes, a type code, the number of dimensions ``d``; then
``d`` big-endian uint32 sizes; then the data, big-endian, C order.
"""

from __future__ import annotations

import gzip
import io
import hashlib
import math
import os

import numpy as np

__all__ = ["read_idx", "write_idx", "IDX_TYPES", "open_bytes"]

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# No IDX file we read should exceed this once decompressed (MNIST train images: 47 MB).
MAX_BYTES = 2 * 2**30


def open_bytes(path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic; clear errors otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                raw = gz.read(MAX_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupted or truncated gzip data ({exc})") from exc
        if len(raw) > MAX_BYTES:
            raise ValueError(f"{path}: decompresses to more than {MAX_BYTES} bytes; refusing to read it")
    return raw


def read_idx(path, *, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian array.

    Parameters
    ----------
    path : str or PathLike
    sha256 : str, optional
        Expected SHA-256 of the decompressed content; a mismatch is an error.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; bad magic, unknown type code, truncated or oversized
        data, checksum mismatch (each message names the file).
    """
    raw = open_bytes(path)
    if sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256:
            raise ValueError(f"{path}: SHA-256 {digest} does not match the expected {sha256}; the file is corrupted")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    body = len(raw) - 4 - 4 * ndim
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX data {what}: shape {shape} needs {expected} bytes, found {body}")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as IDX (gzipped when ``path`` ends in ``.gz`` or ``compress``)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in IDX_TYPES.items()}
    key = array.dtype.newbyteorder("=").str
    if key not in codes and array.dtype != np.uint8:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code")
    code = 0x08 if array.dtype == np.uint8 else codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    path = os.fspath(path)
    if compress or (compress is None and path.endswith(".gz")):
        payload = gzip.compress(payload)
    with open(path, "wb") as fh:
        fh.write(payload)
