"""The ONNX operator test vectors for Conv, ConvTranspose, MaxPool and AveragePool, all of them.

One small adapter turns an ONNX node's attributes into convlayer arguments.
Vectors whose inputs are integer-valued are compared exactly.
"""

import warnings

import numpy as np
import pytest

import convlayer.functional as CF

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from onnx import helper, numpy_helper  # noqa: F401
    from onnx.backend.test.case.node import collect_testcases

OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")


def _cases():
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    out = []
    for case in cases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in OPS:
            out.append(case)
    return out


CASES = _cases()


def test_all_four_ops_have_vectors():
    ops = {c.model.graph.node[0].op_type for c in CASES}
    assert ops == set(OPS)
    assert len(CASES) >= 40


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _padding(attrs, rank):
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return "valid"
    if auto == "SAME_UPPER":
        return "same"
    if auto == "SAME_LOWER":
        return "same_lower"
    pads = attrs.get("pads", [0] * (2 * rank))
    return tuple((int(pads[i]), int(pads[i + rank])) for i in range(rank))


def run_node(node, inputs):
    """Evaluate one ONNX node with convlayer."""
    a = _attrs(node)
    op = node.op_type
    x = inputs[0]
    if op in ("Conv", "ConvTranspose"):
        w = inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        rank = w.ndim - 2
        kw = dict(stride=tuple(a.get("strides", [1] * rank)), dilation=tuple(a.get("dilations", [1] * rank)),
                  groups=int(a.get("group", 1)), padding=_padding(a, rank))
        if op == "Conv":
            return [CF.conv(x, w, b, **kw)]
        if "output_shape" in a:
            # ONNX: output_shape wins over output_padding; without explicit pads the total padding
            # s*(n-1) + output_padding + d*(k-1) + 1 - out is split with the larger half first.
            # A negative total (an output longer than the full one) is our output_padding.
            out = tuple(a["output_shape"])[-rank:]
            kw["output_size"] = out
            if "pads" not in a and not isinstance(kw["padding"], str):
                op_ = a.get("output_padding", [0] * rank)
                pads = []
                for i in range(rank):
                    span = kw["dilation"][i] * (w.shape[2 + i] - 1) + 1
                    total = kw["stride"][i] * (x.shape[2 + i] - 1) + op_[i] + span - out[i]
                    pads.append((total - total // 2, total // 2) if total >= 0 else (0, 0))
                kw["padding"] = tuple(pads)
        elif "output_padding" in a:
            kw["output_padding"] = tuple(a["output_padding"])
        return [CF.conv_transpose(x, w, b, **kw)]
    rank = x.ndim - 2
    kernel = tuple(a["kernel_shape"])
    kw = dict(kernel_size=kernel, stride=tuple(a.get("strides", [1] * rank)), padding=_padding(a, rank),
              dilation=tuple(a.get("dilations", [1] * rank)), ceil_mode=bool(a.get("ceil_mode", 0)))
    xf = x.astype(np.float64) if x.dtype.kind in "ui" else x
    if op == "AveragePool":
        return [CF.avg_pool(xf, count_include_pad=bool(a.get("count_include_pad", 0)), **kw)]
    y, idx = CF.max_pool(xf, return_indices=True, **kw)
    if x.dtype.kind in "ui":
        y = y.astype(x.dtype)
    outs = [y]
    if len(node.output) > 1:
        spatial = x.shape[2:]
        plane = int(np.prod(spatial))
        if a.get("storage_order", 0) == 1:  # column-major indices within the plane
            pos = np.unravel_index(idx, spatial)
            idx = np.ravel_multi_index(pos, spatial, order="F")
        base = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *([1] * rank)) * plane
        outs.append((idx + base).astype(np.int64))
    return outs


@pytest.mark.parametrize("case", CASES, ids=[f"{c.model.graph.node[0].op_type}-{c.name}" for c in CASES])
def test_onnx_vector(case):
    node = case.model.graph.node[0]
    assert case.data_sets, "vector has no data"
    for inputs, expected in case.data_sets:
        got = run_node(node, inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            integer_valued = all(np.array_equal(np.round(v), v) for v in inputs if v.dtype.kind == "f")
            if integer_valued or e.dtype.kind in "ui":
                np.testing.assert_array_equal(g, e)
            else:
                np.testing.assert_allclose(g, e, rtol=case.rtol or 1e-5, atol=case.atol or 1e-7)
