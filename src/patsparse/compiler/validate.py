"""Check a fused graph read from a file before anything is generated from it.

Why: a compiled-model directory is data that may come from anyone, and loading it generates C
from its graph. Every number that reaches the source (sizes, strides, paddings, groups) and
every shape the workspace is planned from is checked here to be an int in range and consistent
with the weights and with the shapes computed from the input, so an edited graph is a
FormatError naming the node, never code that reads or writes outside its buffers.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..errors import FormatError, InputError, UnsupportedError
from .capture import out_shape
from .codegen.base import ACTIVATIONS
from .ir import INPUT, Graph, Node
from .passes import KERNEL_OPS

MAX_DIM = 1 << 15        # any one size (channels, height, width)
MAX_TENSOR = 1 << 28     # floats in one activation or weight tensor
MAX_NODES = 10_000
MAX_WINDOW = 31          # kernel size, stride, padding of a conv or pool


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or not lo <= v <= hi:
        raise FormatError(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _window(attrs: Any, where: str, groups: bool = False) -> dict:
    """k, stride, padding (and groups) of a conv or pool, each an int in range."""
    if not isinstance(attrs, dict):
        raise FormatError(f"{where}: attributes must be an object, got {attrs!r}")
    out = {"k": _int(attrs.get("k"), 1, MAX_WINDOW, f"{where}: k"),
           "stride": _int(attrs.get("stride"), 1, MAX_WINDOW, f"{where}: stride"),
           "padding": _int(attrs.get("padding"), 0, MAX_WINDOW, f"{where}: padding")}
    if groups:
        out["groups"] = _int(attrs.get("groups"), 1, MAX_DIM, f"{where}: groups")
    return out


def _tensor(tensors: dict, key: str, ndim: int, where: str) -> np.ndarray:
    t = tensors.get(key)
    if not isinstance(t, np.ndarray) or t.dtype != np.float32 or t.ndim != ndim or t.size > MAX_TENSOR \
            or 0 in t.shape:
        raise FormatError(f"{where}: tensor {key!r} must be a non-empty {ndim}-D float32 array, got "
                          f"{getattr(t, 'dtype', None)} {getattr(t, 'shape', None)}")
    return t


def _params(d: dict, i: int, tensors: dict, where: str) -> dict[str, np.ndarray]:
    names = d.get("params")
    allowed = {"conv": {"weight", "bias", "expand_weight", "expand_bias"}, "linear": {"weight", "bias"}}
    if not isinstance(names, list) or not set(names) <= allowed.get(d["op"], set()) or \
            len(set(names)) != len(names):
        raise FormatError(f"{where}: params {names!r} are not those of a {d['op']}")
    ndim = {"weight": 4 if d["op"] == "conv" else 2, "bias": 1, "expand_weight": 4, "expand_bias": 1}
    return {k: _tensor(tensors, f"{i}.{k}", ndim[k], where) for k in names}


def _node(d: Any, i: int, tensors: dict, shapes: dict[str, tuple]) -> Node:
    """One node, checked against the shapes of the tensors before it; returns it with its shape."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not 0 < len(d["name"]) <= 256:
        raise FormatError(f"node {i}: not an object with a name")
    where = f"node {i} ({d['name'][:60]!r})"
    if d["name"] in shapes:
        raise FormatError(f"{where}: the name is used twice (or is the reserved {INPUT!r})")
    if d.get("op") not in KERNEL_OPS:
        raise FormatError(f"{where}: op {d.get('op')!r} is not one of {KERNEL_OPS}")
    op = d["op"]
    inputs, residual, act = d.get("inputs"), d.get("residual"), d.get("act")
    if not isinstance(inputs, list) or len(inputs) != 1 or inputs[0] not in shapes:
        raise FormatError(f"{where}: inputs {inputs!r} must name one earlier tensor")
    if residual is not None and residual not in shapes:
        raise FormatError(f"{where}: residual {residual!r} is not an earlier tensor")
    if act not in ACTIVATIONS:
        raise FormatError(f"{where}: activation {act!r} is not one of {ACTIVATIONS}")
    params = _params(d, i, tensors, where)
    attrs = d.get("attrs")
    x = shapes[inputs[0]]
    if op == "conv":
        a = _window(attrs, where, groups=True)
        if "weight" not in params or params["weight"].shape[2:] != (a["k"], a["k"]):
            raise FormatError(f"{where}: conv weight {getattr(params.get('weight'), 'shape', None)} "
                              f"does not match kernel size {a['k']}")
        F = params["weight"].shape[0]
        if "bias" in params and params["bias"].shape != (F,):
            raise FormatError(f"{where}: bias of shape {params['bias'].shape} for {F} filters")
        if "expand" in attrs:  # a 1x1 conv fused in front (graph.fuse_pw_dw)
            e = attrs["expand"]
            ew, eb = params.get("expand_weight"), params.get("expand_bias")
            if not isinstance(e, dict) or set(e) != {"act"} or e["act"] not in ACTIVATIONS or ew is None \
                    or eb is None or ew.shape[1:] != (x[0], 1, 1) or eb.shape != (ew.shape[0],):
                raise FormatError(f"{where}: malformed fused expand conv")
            a["expand"] = {"act": e["act"]}
            x = (ew.shape[0], *x[1:])
        elif "expand_weight" in params or "expand_bias" in params:
            raise FormatError(f"{where}: expand weights without a fused expand conv")
        pool = attrs.get("pool")
        if pool is not None:  # a max pool fused after it (graph.fuse_conv_pool)
            a["pool"] = _window(pool, f"{where} pool")
        if set(attrs) - {"k", "stride", "padding", "groups", "expand", "pool"}:
            raise FormatError(f"{where}: unknown attributes {sorted(set(attrs))}")
    elif op in ("maxpool", "avgpool"):
        a = _window(attrs, where)
        if set(attrs) != {"k", "stride", "padding"}:
            raise FormatError(f"{where}: unknown attributes {sorted(set(attrs))}")
    else:
        if attrs != {}:
            raise FormatError(f"{where}: a {op} has no attributes, got {attrs!r}")
        a = {}
    if op == "linear" and "weight" not in params:
        raise FormatError(f"{where}: linear without a weight")
    if op == "linear" and "bias" in params and params["bias"].shape != (params["weight"].shape[0],):
        raise FormatError(f"{where}: bias of shape {params['bias'].shape} for {params['weight'].shape[0]} outputs")
    try:
        shape = out_shape(op, {k: v for k, v in a.items() if k != "pool"}, params, [x], where)
        if "pool" in a:
            shape = out_shape("maxpool", a["pool"], {}, [shape], where)
    except (InputError, UnsupportedError) as e:
        raise FormatError(f"graph: {e}") from None
    stored = tuple(d["shape"]) if isinstance(d.get("shape"), list) else None
    if op == "gap" and stored == shape[:1]:
        shape = shape[:1]  # torch.mean without keepdim
    if stored != shape:
        raise FormatError(f"{where}: stored shape {d.get('shape')!r} differs from the {list(shape)} its "
                          "input and weights give")
    if int(np.prod(shape)) > MAX_TENSOR:
        raise FormatError(f"{where}: output of {int(np.prod(shape))} floats is too large")
    if residual is not None and shapes[residual] != shape:
        raise FormatError(f"{where}: residual {residual!r} of shape {shapes[residual]} added to {shape}")
    return Node(d["name"], op, list(inputs), shape, a, params, act, residual)


def graph_from_file(obj: Any, tensors: dict[str, np.ndarray], where: str) -> Graph:
    """The graph stored as ``Graph.to_json`` wrote it, every field checked (FormatError naming
    ``where`` and the node otherwise)."""
    try:
        if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list) or \
                not 0 < len(obj["nodes"]) <= MAX_NODES:
            raise FormatError("no list of nodes")
        dims = obj.get("input_shape")
        if not isinstance(dims, list) or len(dims) != 3:
            raise FormatError(f"input_shape {dims!r} is not (C, H, W)")
        in_shape = tuple(_int(v, 1, MAX_DIM, "input_shape") for v in dims)
        if int(np.prod(in_shape)) > MAX_TENSOR:
            raise FormatError(f"input_shape {list(in_shape)} is too large")
        shapes: dict[str, tuple] = {INPUT: in_shape}
        nodes = []
        for i, d in enumerate(obj["nodes"]):
            n = _node(d, i, tensors, shapes)
            shapes[n.name] = n.shape
            nodes.append(n)
        if obj.get("output") not in shapes or obj["output"] == INPUT:
            raise FormatError(f"output {obj.get('output')!r} is not a node")
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None
    return Graph(in_shape, nodes, obj["output"])
