"""The constant part of an ONNX graph, evaluated at import.

Why: exporters compute shapes, pads and resize sizes in the graph (Shape -> Gather -> Unsqueeze
-> Concat -> Reshape ...) even when every input shape is static. Those nodes are not layers;
evaluated once here (ONNX's reference evaluator, node by node) their outputs become constants
the importer reads like initializers, and the layers that use them (Reshape, Pad, Resize) see
plain numbers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# at most this many elements per folded value: shape arithmetic, not tensors of the model
MAX_FOLDED = 1 << 16


def fold(node, known: dict[str, np.ndarray], full_shape: Callable[[str], tuple | None],
         opsets) -> list[np.ndarray] | None:
    """The outputs of ``node`` when it computes only from constants (``known``: initializers and
    values folded so far, in their own dtypes) or is a Shape of a tensor whose shape
    (``full_shape(name)``, batch included) is known; else None. ``opsets``: the model's
    opset_import (an op's inputs and attributes differ between opsets)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    ins = [i for i in node.input if i]
    if node.op_type == "Shape":
        dims = full_shape(node.input[0])
        if not dims or not all(dims):
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return [np.array(dims, np.int64)[attrs.get("start", 0): attrs.get("end", len(dims))]]
    if not ins or any(i not in known for i in ins) or any(known[i].size > MAX_FOLDED for i in ins):
        return None
    inputs = [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(known[i].dtype), None)
              for i in ins]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    try:
        model = onnx.helper.make_model(graph, opset_imports=opsets)
        out = ReferenceEvaluator(model).run(None, {i: known[i] for i in ins})
    except Exception:  # an op the evaluator lacks, or a malformed node: left to the importer
        return None
    return [np.asarray(v) for v in out]


def reshaped(in_dims: tuple, target: np.ndarray) -> tuple | None:
    """The dims ONNX Reshape gives ``in_dims`` (batch included) for ``target`` (0 copies a dim,
    -1 takes the rest; allowzero unset), or None when they do not fit."""
    out = [int(in_dims[i]) if v == 0 and i < len(in_dims) else int(v) for i, v in enumerate(np.ravel(target))]
    total, known = int(np.prod(in_dims)), int(np.prod([v for v in out if v != -1]))
    if out.count(-1) == 1 and known and total % known == 0:
        out[out.index(-1)] = total // known
    return tuple(out) if out.count(-1) == 0 and int(np.prod(out)) == total else None
