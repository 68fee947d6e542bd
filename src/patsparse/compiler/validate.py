"""Check a fused graph read from a file before anything is generated from it.

Why: a compiled-model directory is data that may come from anyone, and loading it generates C
from its graph. Every number that reaches the source (sizes, strides, paddings, groups) and
every shape the workspace is planned from is checked here to be an int in range and consistent
with the weights and with the shapes computed from the input, so an edited graph is a
FormatError naming the node, never code that reads or writes outside its buffers.

What each op may carry mirrors what the compiler writes (capture.py, passes.py, lowering.py):
its attributes exactly, its weights by name and rank, its number of inputs, whether it may have
a residual or an activation; activation strings are read by the generators' own parser
(codegen/activations.py). A vector (n,) and (n, 1, 1) are one stored tensor (layout.spatial),
so a stored shape may be either form of the shape recomputed from its inputs.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..errors import FormatError, InputError, UnsupportedError
from .capture import out_shape
from .codegen import activations, movement
from .codegen.channelwise import BINARY
from .ir import INPUT, Graph, Node
from .layout import spatial
from .passes import ACT_PRODUCERS, KERNEL_OPS

MAX_DIM = 1 << 15        # any one size (channels, height, width)
MAX_TENSOR = 1 << 28     # floats in one activation or weight tensor
MAX_NODES = 10_000
MAX_WINDOW = 31          # kernel size, stride, padding of a conv or pool

# op -> its weights and their ranks; the ones it must have
PARAMS = {"conv": {"weight": 4, "bias": 1, "expand_weight": 4, "expand_bias": 1},
          "linear": {"weight": 2, "bias": 1}, "affine": {"weight": 1, "bias": 1}, "prelu": {"weight": 1}}
REQUIRED_PARAMS = {"conv": {"weight"}, "linear": {"weight"}, "affine": {"weight", "bias"}, "prelu": {"weight"}}
# op -> (fewest, most) inputs; every other op reads one tensor
INPUTS = {"binary": (2, 2), "concat": (1, MAX_NODES)}
# the ops passes.fuse_add gives a residual
RESIDUAL_OPS = ("conv", "linear")


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or not lo <= v <= hi:
        raise FormatError(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise FormatError(f"{what} must be true or false, got {v!r}")
    return v


def _choice(v: Any, options: tuple[str, ...], what: str) -> str:
    if not isinstance(v, str) or v not in options:
        raise FormatError(f"{what} must be one of {options}, got {v!r}")
    return v


def _float(v: Any, what: str) -> float:
    """A finite float that float32 holds exactly (it reaches the source as a float32 literal)."""
    if not isinstance(v, float) or not math.isfinite(v) or float(np.float32(v)) != v:
        raise FormatError(f"{what} must be a finite float32 value, got {v!r}")
    return v


def _act(v: Any, what: str) -> str:
    """An activation string, parsed by the generators' own parser and written exactly as the
    compiler writes it (so every parameter is a float32 value the C literal keeps)."""
    if not isinstance(v, str):
        raise FormatError(f"{what}: activation {v!r} is not a string")
    try:
        name, params = activations.parse(v)
    except UnsupportedError as e:
        raise FormatError(f"{what}: {e}") from None
    if activations.spec(name, *params) != v:
        raise FormatError(f"{what}: activation {v!r} is not written as the compiler writes it "
                          f"({activations.spec(name, *params)!r})")
    return v


def _keys(attrs: Any, required: set[str], optional: set[str], where: str) -> dict:
    if not isinstance(attrs, dict) or not required <= set(attrs) <= required | optional:
        raise FormatError(f"{where}: attributes {repr(attrs)[:200]} are not those of this op (needs "
                          f"{sorted(required)}, may have {sorted(optional)})")
    return attrs


def _window(attrs: Any, where: str, pool: bool = False) -> dict:
    """k, stride, padding of a conv or pool, each an int in range (a pool's padding at most
    half its window, as PyTorch and the pool generators require)."""
    k = _int(attrs.get("k"), 1, MAX_WINDOW, f"{where}: k")
    return {"k": k, "stride": _int(attrs.get("stride"), 1, MAX_WINDOW, f"{where}: stride"),
            "padding": _int(attrs.get("padding"), 0, k // 2 if pool else MAX_WINDOW, f"{where}: padding")}


def _conv_attrs(attrs: Any, x: tuple, params: dict, where: str) -> tuple[dict, tuple]:
    """A conv's attributes (a fused expand conv and max pool included) and the (C, H, W) its
    main conv reads from ``x`` (the expand conv's output when there is one)."""
    attrs = _keys(attrs, {"k", "stride", "padding", "groups"}, {"expand", "pool"}, where)
    a = {**_window(attrs, where), "groups": _int(attrs["groups"], 1, MAX_DIM, f"{where}: groups")}
    if "weight" not in params or params["weight"].shape[2:] != (a["k"], a["k"]):
        raise FormatError(f"{where}: conv weight {getattr(params.get('weight'), 'shape', None)} "
                          f"does not match kernel size {a['k']}")
    F = params["weight"].shape[0]
    if "bias" in params and params["bias"].shape != (F,):
        raise FormatError(f"{where}: bias of shape {params['bias'].shape} for {F} filters")
    if "expand" in attrs:  # a 1x1 conv fused in front (lowering.fuse_pw_dw)
        e = _keys(attrs["expand"], {"act"}, set(), f"{where} expand")
        ew, eb = params.get("expand_weight"), params.get("expand_bias")
        if ew is None or eb is None or ew.shape[1:] != (x[0], 1, 1) or eb.shape != (ew.shape[0],):
            raise FormatError(f"{where}: malformed fused expand conv")
        a["expand"] = {"act": _act(e["act"], f"{where} expand")}
        x = (ew.shape[0], *x[1:])
    elif "expand_weight" in params or "expand_bias" in params:
        raise FormatError(f"{where}: expand weights without a fused expand conv")
    if "pool" in attrs:  # a max pool fused after it (lowering.fuse_conv_pool)
        a["pool"] = _window(_keys(attrs["pool"], {"k", "stride", "padding"}, set(), f"{where} pool"),
                            f"{where} pool", pool=True)
    return a, x


def _attrs(op: str, attrs: Any, x: tuple, where: str) -> dict:
    """The checked attributes of a non-conv op reading ``x`` first (only those the compiler
    writes, each in range)."""
    if op in ("maxpool", "avgpool"):
        extra = {"ceil_mode", "dilation"} if op == "maxpool" else {"ceil_mode", "count_include_pad"}
        attrs = _keys(attrs, {"k", "stride", "padding"}, extra, where)
        a = _window(attrs, where, pool=True)
        for key in ("ceil_mode", "count_include_pad"):
            if key in attrs:
                a[key] = _bool(attrs[key], f"{where}: {key}")
        if "dilation" in attrs:
            a["dilation"] = _int(attrs["dilation"], 1, MAX_WINDOW, f"{where}: dilation")
        return a
    if op == "binary":
        kind = _keys(attrs, {"op"}, set(), where)["op"]
        if not isinstance(kind, str) or kind not in BINARY:
            raise FormatError(f"{where}: binary op {kind!r} is not one of {tuple(BINARY)}")
        return {"op": kind}
    if op == "slice":
        attrs = _keys(attrs, {"start", "channels"}, set(), where)
        start = _int(attrs["start"], 0, x[0] - 1, f"{where}: start")
        return {"start": start, "channels": _int(attrs["channels"], 1, x[0] - start, f"{where}: channels")}
    if op == "pad":
        attrs = _keys(attrs, {"pads", "mode", "value"}, {"dilation"}, where)
        pads, dil = attrs["pads"], attrs.get("dilation", [1, 1])
        if not isinstance(pads, list) or len(pads) != 4 or not isinstance(dil, list) or len(dil) != 2:
            raise FormatError(f"{where}: pads {pads!r} / dilation {dil!r} are not (top, left, bottom, right) / (h, w)")
        a = {"pads": [_int(p, -MAX_DIM, MAX_DIM, f"{where}: pads") for p in pads],
             "mode": _choice(attrs["mode"], movement.PAD_MODES, f"{where}: mode"),
             "value": _float(attrs["value"], f"{where}: value")}
        if "dilation" in attrs:
            a["dilation"] = [_int(d, 1, MAX_WINDOW, f"{where}: dilation") for d in dil]
        try:  # reflect needs pads below the size: the generator's own check
            for n, lo, hi, d in ((x[1], pads[0], pads[2], dil[0]), (x[2], pads[1], pads[3], dil[1])):
                movement.pad_taps(n, lo, hi, a["mode"], d)
        except UnsupportedError as e:
            raise FormatError(f"{where}: {e}") from None
        return a
    if op == "resize":
        attrs = _keys(attrs, {"size", "mode", "align_corners"}, {"scales"}, where)
        size = attrs["size"]
        if not isinstance(size, list) or len(size) != 2:
            raise FormatError(f"{where}: size {size!r} is not (H, W)")
        a = {"size": [_int(v, 1, MAX_DIM, f"{where}: size") for v in size],
             "mode": _choice(attrs["mode"], movement.RESIZE_MODES, f"{where}: mode"),
             "align_corners": _bool(attrs["align_corners"], f"{where}: align_corners")}
        if "scales" in attrs:
            sc = attrs["scales"]
            if not isinstance(sc, list) or len(sc) != 2:
                raise FormatError(f"{where}: scales {sc!r} is not (sh, sw)")
            if not all(isinstance(v, float) and 0 < v < math.inf for v in sc):
                raise FormatError(f"{where}: scales {sc!r} must be positive finite floats")
            a["scales"] = list(sc)
        return a
    if op == "phases":  # "half" / "packed" absent: a 3x3 conv's mosaic of equal tiles, as saved before
        attrs = _keys(attrs, {"d", "inverse", "size"}, {"half", "packed"}, where)
        size = attrs["size"]
        if not isinstance(size, list) or len(size) != 2:
            raise FormatError(f"{where}: size {size!r} is not (H, W)")
        return {"d": _int(attrs["d"], 2, MAX_DIM, f"{where}: d"), "inverse": _bool(attrs["inverse"], f"{where}: inverse"),
                "half": _int(attrs.get("half", 1), 1, MAX_DIM, f"{where}: half"),
                "packed": _bool(attrs.get("packed", False), f"{where}: packed"),
                "size": [_int(v, 1, MAX_DIM, f"{where}: size") for v in size]}
    if op in ("pixel_shuffle", "shuffle"):
        key = "r" if op == "pixel_shuffle" else "groups"
        return {key: _int(_keys(attrs, {key}, set(), where)[key], 1, MAX_DIM, f"{where}: {key}")}
    if op == "softmax":
        return {"log": _bool(_keys(attrs, {"log"}, set(), where)["log"], f"{where}: log")}
    if op == "affine":  # a folded BatchNorm keeps its eps (passes.fold_bn), which no kernel reads
        eps = _keys(attrs, set(), {"eps"}, where).get("eps", 0.0)
        if not isinstance(eps, float) or not 0.0 <= eps < math.inf:
            raise FormatError(f"{where}: eps must be a finite float >= 0, got {eps!r}")
        return dict(attrs)
    _keys(attrs, set(), set(), where)
    return {}


def _tensor(tensors: dict, key: str, ndim: int, where: str) -> np.ndarray:
    t = tensors.get(key)
    if not isinstance(t, np.ndarray) or t.dtype != np.float32 or t.ndim != ndim or t.size > MAX_TENSOR \
            or 0 in t.shape:
        raise FormatError(f"{where}: tensor {key!r} must be a non-empty {ndim}-D float32 array, got "
                          f"{getattr(t, 'dtype', None)} {getattr(t, 'shape', None)}")
    return t


def _params(d: dict, i: int, tensors: dict, where: str) -> dict[str, np.ndarray]:
    """The node's weights: exactly the names its op takes, each of the right rank."""
    names, op = d.get("params"), d["op"]
    ndims, required = PARAMS.get(op, {}), REQUIRED_PARAMS.get(op, set())
    if not isinstance(names, list) or not all(isinstance(k, str) for k in names) or \
            not required <= set(names) <= set(ndims) or len(set(names)) != len(names):
        raise FormatError(f"{where}: params {names!r} are not those of a {op} (needs {sorted(required)}, "
                          f"may have {sorted(ndims)})")
    params = {k: _tensor(tensors, f"{i}.{k}", ndims[k], where) for k in names}
    if op == "linear" and "bias" in params and params["bias"].shape != (params["weight"].shape[0],):
        raise FormatError(f"{where}: bias of shape {params['bias'].shape} for {params['weight'].shape[0]} outputs")
    if op == "affine" and params["bias"].shape != params["weight"].shape:
        raise FormatError(f"{where}: {params['bias'].size} shifts for {params['weight'].size} scales")
    return params


def _inputs(d: dict, op: str, shapes: dict[str, tuple], where: str) -> list[str]:
    inputs = d.get("inputs")
    lo, hi = INPUTS.get(op, (1, 1))
    if not isinstance(inputs, list) or not lo <= len(inputs) <= hi or \
            any(not isinstance(t, str) or t not in shapes for t in inputs):
        raise FormatError(f"{where}: inputs {inputs!r} must name {lo if lo == hi else f'{lo} to {hi}'} "
                          f"earlier tensor{'s' if hi > 1 else ''} (a {op})")
    return list(inputs)


def _shape(v: Any, where: str) -> tuple:
    if not isinstance(v, list) or not 1 <= len(v) <= 3:
        raise FormatError(f"{where}: stored shape {v!r} is not a list of 1 to 3 sizes")
    shape = tuple(_int(s, 1, MAX_DIM, f"{where}: shape") for s in v)
    if int(np.prod(shape)) > MAX_TENSOR:
        raise FormatError(f"{where}: output of {int(np.prod(shape))} floats is too large")
    return shape


def _node(d: Any, i: int, tensors: dict, shapes: dict[str, tuple]) -> Node:
    """One node, checked against the shapes of the tensors before it; returns it with its shape."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not 0 < len(d["name"]) <= 256:
        raise FormatError(f"node {i}: not an object with a name")
    where = f"node {i} ({d['name'][:60]!r})"
    if d["name"] in shapes:
        raise FormatError(f"{where}: the name is used twice (or is the reserved {INPUT!r})")
    if d.get("op") not in KERNEL_OPS:
        raise FormatError(f"{where}: op {d.get('op')!r} is not one of {KERNEL_OPS}")
    op, residual = d["op"], d.get("residual")
    inputs = _inputs(d, op, shapes, where)
    if residual is not None and (op not in RESIDUAL_OPS or not isinstance(residual, str) or residual not in shapes):
        raise FormatError(f"{where}: residual {residual!r} is not an earlier tensor added by a "
                          f"{' or '.join(RESIDUAL_OPS)}")
    act = _act(d.get("act"), where)
    if act != "none" and op not in ACT_PRODUCERS + ("act",):
        raise FormatError(f"{where}: a {op} applies no activation, got {act!r}")
    params = _params(d, i, tensors, where)
    # a vector (n,) is stored as (n, 1, 1) (layout.spatial); shapes are recomputed on that form
    ins = [spatial(shapes[t]) for t in inputs]
    if op == "conv":
        a, ins[0] = _conv_attrs(d.get("attrs"), ins[0], params, where)
    else:
        a = _attrs(op, d.get("attrs"), ins[0], where)
    if op in ("affine", "prelu") and params["weight"].shape != (ins[0][0],):
        raise FormatError(f"{where}: {params['weight'].size} per-channel values for {ins[0][0]} channels")
    try:
        shape = out_shape(op, {k: v for k, v in a.items() if k != "pool"}, params, ins, where)
        if "pool" in a:
            shape = out_shape("maxpool", a["pool"], {}, [shape], where)
    except (InputError, UnsupportedError) as e:
        raise FormatError(f"graph: {e}") from None
    stored = _shape(d.get("shape"), where)
    if spatial(stored) != spatial(shape):
        raise FormatError(f"{where}: stored shape {list(stored)} differs from the {list(shape)} its "
                          "inputs and weights give")
    if residual is not None and spatial(shapes[residual]) != spatial(stored):
        raise FormatError(f"{where}: residual {residual!r} of shape {shapes[residual]} added to {stored}")
    return Node(d["name"], op, inputs, stored, a, params, act, residual)


def graph_from_file(obj: Any, tensors: dict[str, np.ndarray], where: str) -> Graph:
    """The graph stored as ``Graph.to_json`` wrote it, every field checked (FormatError naming
    ``where`` and the node otherwise)."""
    try:
        if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list) or \
                not 0 < len(obj["nodes"]) <= MAX_NODES:
            raise FormatError("no list of nodes")
        dims = obj.get("input_shape")
        if not isinstance(dims, list) or len(dims) not in (1, 2, 3):
            raise FormatError(f"input_shape {dims!r} is not (C, H, W), (C, L) or (features,)")
        in_shape = tuple(_int(v, 1, MAX_DIM, "input_shape") for v in dims)
        if int(np.prod(in_shape)) > MAX_TENSOR:
            raise FormatError(f"input_shape {list(in_shape)} is too large")
        shapes: dict[str, tuple] = {INPUT: in_shape}
        nodes = []
        for i, d in enumerate(obj["nodes"]):
            n = _node(d, i, tensors, shapes)
            shapes[n.name] = n.shape
            nodes.append(n)
        if not isinstance(obj.get("output"), str) or obj["output"] not in shapes or obj["output"] == INPUT:
            raise FormatError(f"output {obj.get('output')!r} is not a node")
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None
    return Graph(in_shape, nodes, obj["output"])
