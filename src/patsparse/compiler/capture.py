"""Lower a PyTorch model (torch.fx) or an ONNX file to the compiler IR.

Every op is checked here, before any code is generated: anything outside the supported set is
an UnsupportedError naming the op and the layer, so the user learns at once what to change.
Shapes come from running the example input through the traced graph (torch.fx ShapeProp).
"""

from __future__ import annotations

import functools
import operator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FormatError, InputError, UnsupportedError
from .codegen import activations, movement
from . import onnx_const
from .codegen.pool import pool_out_size
from .ir import INPUT, Graph, Node
from .layout import spatial


def unique_name(base: str, used: set[str]) -> str:
    """``base``, or ``base#2``, ``base#3``... : the first not in ``used`` (which it joins).

    Why: the IR identifies tensors by node name (buffers, residuals, the output), while a model's
    names are only labels: ONNX allows two nodes of one name, and a layer may be called like the
    reserved ``input`` tensor. ``used`` starts with ``input``."""
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}#{k}"
    used.add(name)
    return name


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().float().numpy().copy()


def _pair(v, what: str, where: str) -> int:
    """A square size (int or equal pair); anything else is unsupported. Paddings may be 0,
    every other size must be positive."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise UnsupportedError(f"{where}: non-square {what} {tuple(v)} is not supported")
        v = v[0]
    lo = 0 if what == "padding" else 1
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= 1 << 15:
        raise UnsupportedError(f"{where}: {what} {v!r} is not supported (need an int >= {lo})")
    return v


def _conv_pads(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of a Conv2d; "same" (stride 1) puts an odd extra row /
    column last, as PyTorch does."""
    (kh, kw), (dh, dw) = m.kernel_size, m.dilation
    if m.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    return (0, 0, 0, 0) if m.padding == "valid" else (*m.padding, *m.padding)


def _conv(m: nn.Conv2d, where: str) -> tuple[dict, dict, dict | None]:
    """(conv attrs, conv params, the attrs of a pad node before it or None): a padding mode
    other than zeros is a reflect / replicate pad node and an unpadded conv, as PyTorch runs it."""
    if m.padding_mode not in ("zeros", "reflect", "replicate"):
        raise UnsupportedError(f"{where}: Conv2d padding mode {m.padding_mode!r}; zeros, reflect and "
                               "replicate are supported")
    pads = _conv_pads(m)
    if m.padding_mode == "zeros":
        return (*conv_node(_np(m.weight), _np(m.bias), m.stride, pads, m.dilation, m.groups, where), None)
    return (*conv_node(_np(m.weight), _np(m.bias), m.stride, (0, 0, 0, 0), m.dilation, m.groups, where),
            pad_attrs(pads, m.padding_mode, 0.0, where))


def conv_node(weight: np.ndarray, bias: np.ndarray | None, stride, pads, dilation, groups: int,
              where: str) -> tuple[dict, dict]:
    """IR attrs and params of a conv with any groups, dilation, kernel shape and padding
    (``pads``: top, left, bottom, right), as the equivalent conv the generators take: a square
    kernel, one padding, and groups 1 or depthwise 3x3. Dilation and the kernel's shape and
    padding become zero taps of a larger square kernel whose window is placed so every tap
    reads the same input as before; a depthwise conv (any odd kernel, stride 1 or 2) stays one,
    other groups become one block-diagonal conv (its cross-group kernels are zero: a 3x3 one
    goes to the pattern kernel, which skips them; a dense generator computes them, groups times
    the FLOPs). What has no such equivalent (a
    non-square stride, a kernel over 7 wide afterwards) is an UnsupportedError here."""
    at = f"layer {where!r}"
    s = _pair(list(stride), "stride", at)
    f, cg, kh, kw = weight.shape
    (dh, dw), (pt, pl, pb, pr) = dilation, pads
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # dilated extent
    if eh - pt - pb != ew - pl - pr:
        raise UnsupportedError(f"{at}: conv with kernel {kh}x{kw}, dilation {(dh, dw)} and padding "
                               f"{tuple(pads)} (top, left, bottom, right) has no square equivalent")
    p = max(pads)
    k = eh + 2 * p - pt - pb
    if k > 7 or min(pads) < 0:
        raise UnsupportedError(f"{at}: conv with kernel {kh}x{kw}, dilation {(dh, dw)} and padding "
                               f"{tuple(pads)} needs a {k}x{k} equivalent (at most 7x7 is supported)")
    w = np.zeros((f, cg, k, k), np.float32)
    w[:, :, p - pt: p - pt + eh: dh, p - pl: p - pl + ew: dw] = weight
    if groups > 1 and not (k % 2 == 1 and s <= 2 and groups == f and cg == 1):  # depthwise: its own kernel
        w, groups = block_diagonal(w, groups), 1
    params = {"weight": w} if bias is None else {"weight": w, "bias": bias}
    return {"k": k, "stride": s, "padding": p, "groups": groups}, params


def block_diagonal(w: np.ndarray, groups: int) -> np.ndarray:
    """The groups=1 weight of a grouped conv's weight (F, C / groups, k, k): zero across groups."""
    f, cg = w.shape[:2]
    fg = f // groups
    dense = np.zeros((f, cg * groups, *w.shape[2:]), np.float32)
    for g in range(groups):
        dense[g * fg:(g + 1) * fg, g * cg:(g + 1) * cg] = w[g * fg:(g + 1) * fg]
    return dense


def conv1d_nodes(weight: np.ndarray, bias: np.ndarray | None, stride: int, pads: tuple[int, int], dilation: int,
                 groups: int, where: str) -> tuple[dict | None, dict, dict, dict | None]:
    """A 1-D conv on (C, L), stored as (C, 1, L), as (attrs of a pad node before it or None, conv
    attrs, conv params, attrs of a cropping pad node after it or None): a square conv of the
    kernel's dilated extent e (odd) with the taps in its middle row and padding P = (e - 1) / 2,
    which keeps the height 1. More padding along L is a pad node before; less (stride 1) crops
    that conv's output, since cropping its input would put zeros where the data was."""
    f, cg, k = weight.shape
    e = dilation * (k - 1) + 1
    p = (e - 1) // 2
    less = any(q < p for q in pads)
    if e % 2 == 0 or (less and stride != 1):
        raise UnsupportedError(f"layer {where!r}: 1-D conv with kernel {k}, dilation {dilation}, stride {stride} "
                               f"and padding {tuple(pads)} (an odd extent, and a stride of 1 when padded less "
                               "than half of it, are supported)")
    w = np.zeros((f, cg, e, e), np.float32)
    w[:, :, p, ::dilation] = weight
    more = [max(0, q - p) for q in pads]
    pre = pad_attrs((0, more[0], 0, more[1]), "constant", 0.0, where) if any(more) else None
    post = pad_attrs((0, min(0, pads[0] - p), 0, min(0, pads[1] - p)), "constant", 0.0, where) if less else None
    attrs, params = conv_node(w, bias, (stride, stride), (p, p, p, p), (1, 1), groups, where)
    return pre, attrs, params, post


def dilated_as_phases(weight: np.ndarray, bias: np.ndarray | None, stride, pads, dilation, groups: int,
                      in_shape: tuple, where: str) -> tuple[dict | None, dict, dict, dict | None] | None:
    """A square k x k conv (k odd) with dilation d > 1, stride 1 and padding d (k - 1) / 2 (the
    "same" dilated conv of DeepLab's ASPP, dilated ResNets and MobileNet-V3 backbones) as (phase
    mosaic attrs, conv attrs, conv params, inverse attrs): the conv becomes an undilated k x k
    without padding over the mosaic of the input's d x d phases (codegen/movement.phase_taps),
    so a 3x3 stays 9 taps, pattern-prunable, and any d works, instead of a (d (k - 1) + 1)-wide
    square kernel of zeros. When d is at least the input's height and width, every off-centre
    tap reads padding: the conv is the 1x1 conv of its centre taps, and both mosaic attrs are
    None (DeepLab's ASPP rates 24 and 36 on a 14x14 map). None for any other conv."""
    d, k = tuple(dilation), weight.shape[2]
    half = (k - 1) // 2
    if weight.shape[3] != k or k % 2 == 0 or d[0] != d[1] or d[0] < 2 or tuple(stride) != (1, 1) \
            or tuple(pads) != (d[0] * half,) * 4 or len(in_shape) != 3:
        return None
    size = [int(in_shape[1]), int(in_shape[2])]
    if d[0] >= max(size):
        centre = np.ascontiguousarray(weight[:, :, half:half + 1, half:half + 1])
        return (None, *conv_node(centre, bias, (1, 1), (0, 0, 0, 0), (1, 1), groups, where), None)
    attrs, params = conv_node(weight, bias, (1, 1), (0, 0, 0, 0), (1, 1), groups, where)
    return ({"d": d[0], "half": half, "packed": True, "inverse": False, "size": size}, attrs, params,
            {"d": d[0], "half": half, "packed": True, "inverse": True, "size": size})


def conv_transpose_nodes(weight: np.ndarray, bias: np.ndarray | None, stride, pads, output_padding, dilation,
                         groups: int, where: str) -> tuple[dict, dict, dict]:
    """A transposed conv as PyTorch defines it (``pads``: top, left, bottom, right) lowered to
    (pad attrs, conv attrs, conv params): its input spread by the stride with zeros and padded
    by dilation * (k - 1) - padding (+ output_padding after; negative crops), then a stride-1
    conv with the weight flipped and its in / out channels swapped per group."""
    cin, cog, kh, kw = weight.shape
    g = groups
    if cin % g:
        raise UnsupportedError(f"layer {where!r}: ConvTranspose with {cin} input channels in {g} groups")
    w = weight.reshape(g, cin // g, cog, kh, kw).transpose(0, 2, 1, 3, 4).reshape(g * cog, cin // g, kh, kw)
    (dh, dw), (oh, ow) = dilation, output_padding
    ext_h, ext_w = dh * (kh - 1), dw * (kw - 1)
    pad = pad_attrs((ext_h - pads[0], ext_w - pads[1], ext_h - pads[2] + oh, ext_w - pads[3] + ow),
                    "constant", 0.0, where)
    pad["dilation"] = [_pair(stride[0], "stride", where), _pair(stride[1], "stride", where)]
    attrs, params = conv_node(np.ascontiguousarray(w[:, :, ::-1, ::-1]), bias, (1, 1), (0, 0, 0, 0), dilation, g,
                              where)
    return pad, attrs, params


def _pool_attrs(k, s, p, ceil, where: str, dilation=1, count_include_pad=True) -> dict:
    """A pool's IR attributes; ceil_mode, dilation (max) and count_include_pad (avg) only when
    they differ from the default, so a plain pool's attributes stay as they were."""
    k = _pair(k, "kernel size", where)
    attrs = {"k": k, "stride": _pair(s if s is not None else k, "stride", where),
             "padding": _pair(p, "padding", where)}
    if ceil:
        attrs["ceil_mode"] = True
    if _pair(dilation, "dilation", where) != 1:
        attrs["dilation"] = _pair(dilation, "dilation", where)
    if not count_include_pad:
        attrs["count_include_pad"] = False
    return attrs


def _adaptive(out_size, in_shape: tuple, where: str) -> tuple[str, dict]:
    """AdaptiveAvgPool2d as gap, identity, or a plain average pool when the sizes divide."""
    o = out_size if isinstance(out_size, (tuple, list)) else (out_size, out_size)
    H, W = in_shape[1:]
    oh, ow = (H if o[0] is None else o[0]), (W if o[1] is None else o[1])
    if (oh, ow) == (1, 1):
        return "gap", {}
    if (oh, ow) == (H, W):
        return "identity", {}
    if H % oh == 0 and W % ow == 0 and H // oh == W // ow:
        k = H // oh
        return "avgpool", {"k": k, "stride": k, "padding": 0}
    raise UnsupportedError(f"{where}: AdaptiveAvgPool2d from {H}x{W} to {oh}x{ow} is not supported")


_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_NOOP_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
# sub / mul / div of two tensors (a constant operand is refused by ``src``)
_BINARY_FUNCS = {operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", "sub": "sub", "__sub__": "sub",
                 operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul", "__mul__": "mul",
                 operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "div": "div",
                 "__truediv__": "div"}
_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}


def trace(model: nn.Module) -> "torch.fx.GraphModule":
    """``model`` (in eval mode) traced with torch.fx; an untraceable model is an UnsupportedError."""
    import torch.fx

    try:
        return torch.fx.symbolic_trace(model.eval())
    except Exception as e:  # fx raises plain exceptions for data-dependent control flow
        raise UnsupportedError(f"torch.fx cannot trace {type(model).__name__}: {e}") from e


def capture_torch(model: nn.Module, example: torch.Tensor, *, on_unsupported=None) -> Graph:
    """Trace ``model`` with torch.fx and lower it to the IR (shapes from ``example``).

    ``on_unsupported(fx_node, error)``, when given, is told of each node the IR cannot express
    instead of the first one raising, and lowering goes on past it: how the fallback
    (compiler/fallback.py) learns which nodes to run in PyTorch. The nodes need shapes then
    (``model`` a GraphModule that ShapeProp has run on); the graph returned lacks those nodes."""
    import torch.fx

    if not isinstance(example, torch.Tensor) or example.dim() not in (2, 3, 4):
        raise InputError(f"example input must be a (N, C, H, W), (N, C, L) or (N, features) tensor, got "
                         f"{getattr(example, 'shape', type(example).__name__)}")
    gm = model if on_unsupported is not None else trace(model)
    mods = dict(gm.named_modules())
    names: dict[str, str] = {}  # fx node -> IR name (or an alias for dropped no-ops)
    nodes: list[Node] = []
    out_name = None

    shapes: dict[str, tuple] = {INPUT: tuple(int(s) for s in example.shape[1:])}

    def shape(n) -> tuple:
        """Per-image shape of an fx node's value (inferred while lowering: no forward pass)."""
        return shapes[names[n.name]]

    def src(a, where: str) -> str:
        if not isinstance(a, torch.fx.Node):
            raise UnsupportedError(f"{where}: constant operand {a!r} is not supported")
        if a.name in values:
            raise UnsupportedError(f"{where}: {a.name} (a size, a constant or a 5-D channel-group view) read "
                                   "as a tensor")
        return names[a.name]

    used: set[str] = {INPUT}
    splits: dict[str, tuple] = {}
    values: dict[str, object] = {}  # fx name -> a value that is no tensor (_lower_value)

    def add(n, op, inputs, attrs=None, params=None, suffix=""):
        # module path for modules (a module called twice gets #2, #3...), fx name otherwise
        name = unique_name((str(n.target) if n.op == "call_module" else n.name) + suffix, used)
        ins = [src(a, n.name) for a in inputs]
        out = out_shape(op, attrs or {}, params or {}, [shapes[i] for i in ins], name)
        if op == "gap" and (n.target == "mean" or n.target is torch.mean) and not n.kwargs.get("keepdim", False) \
                and not (len(n.args) > 2 and n.args[2]):
            out = out[:1]
        node = Node(name, op, ins, out, attrs or {}, params or {})
        shapes[name] = out
        nodes.append(node)
        names[n.name] = node.name

    for n in gm.graph.nodes:
        try:
            where = str(n.target) if n.op == "call_module" else n.name
            if n.op == "placeholder":
                if INPUT in names.values():
                    raise UnsupportedError(f"{n.name}: models with more than one input are not supported")
                names[n.name] = INPUT
            elif n.op == "output":
                out_name = src(n.args[0], "output")
            elif n.op == "call_module":
                m = mods[n.target]
                if isinstance(m, nn.Conv2d):
                    if len(shape(n.args[0])) != 3:
                        raise InputError(f"layer {where!r}: Conv2d on a per-image shape {shape(n.args[0])}; it needs "
                                         "a 4-D (N, C, H, W) input (was the batch dimension left out of the "
                                         "example?)")
                    phased = m.padding_mode == "zeros" and dilated_as_phases(
                        _np(m.weight), _np(m.bias), m.stride, _conv_pads(m), m.dilation, m.groups,
                        shape(n.args[0]), where)
                    if phased and phased[0] is None:
                        add(n, "conv", n.args[:1], phased[1], phased[2])
                        continue
                    if phased:
                        add(n, "phases", n.args[:1], phased[0], suffix=".phases")
                        add(n, "conv", [n], phased[1], phased[2], suffix=".mosaic")
                        add(n, "phases", [n], phased[3])
                        continue
                    attrs, params, padded = _conv(m, where)
                    if padded is not None:
                        add(n, "pad", n.args[:1], padded, suffix=".pad")
                    add(n, "conv", [n] if padded else n.args[:1], attrs, params)
                elif isinstance(m, nn.ConvTranspose2d):
                    if m.padding_mode != "zeros" or not isinstance(m.padding, tuple):
                        raise UnsupportedError(f"layer {where!r}: ConvTranspose2d padding {m.padding!r} "
                                               f"({m.padding_mode})")
                    pad, attrs, params = conv_transpose_nodes(_np(m.weight), _np(m.bias), m.stride, (*m.padding, *m.padding),
                                                              m.output_padding, m.dilation, m.groups, where)
                    add(n, "pad", n.args[:1], pad, suffix=".spread")
                    add(n, "conv", [n], attrs, params)
                elif isinstance(m, nn.Conv1d):
                    if m.padding_mode != "zeros" or isinstance(m.padding, str):
                        raise UnsupportedError(f"layer {where!r}: Conv1d padding {m.padding!r} ({m.padding_mode})")
                    pre, attrs, params, post = conv1d_nodes(_np(m.weight), _np(m.bias), m.stride[0],
                                                            (*m.padding, *m.padding), m.dilation[0], m.groups, where)
                    if pre is not None:
                        add(n, "pad", n.args[:1], pre, suffix=".pad")
                    add(n, "conv", [n] if pre else n.args[:1], attrs, params, suffix=".same" if post else "")
                    if post is not None:
                        add(n, "pad", [n], post)
                elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                    if m.running_mean is None:
                        raise UnsupportedError(f"{where}: BatchNorm2d without running statistics")
                    params = {"mean": _np(m.running_mean), "var": _np(m.running_var),
                              "gamma": _np(m.weight) if m.affine else np.ones(m.num_features, np.float32),
                              "beta": _np(m.bias) if m.affine else np.zeros(m.num_features, np.float32)}
                    add(n, "bn", n.args[:1], {"eps": float(m.eps)}, params)
                elif type(m) in _ACT_MODULES:
                    add(n, _ACT_MODULES[type(m)], n.args[:1])
                elif isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
                    add(n, "relu6", n.args[:1])
                elif isinstance(m, nn.PReLU) and m.num_parameters > 1:
                    add(n, "prelu", n.args[:1], {}, {"weight": _np(m.weight)})
                elif _act_of_module(m, where) is not None:
                    add(n, "act", n.args[:1], {"act": _act_of_module(m, where)})
                elif isinstance(m, _NOOP_MODULES):
                    names[n.name] = src(n.args[0], where)
                elif isinstance(m, nn.MaxPool2d):
                    add(n, "maxpool", n.args[:1], _pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode, where, m.dilation))
                elif isinstance(m, nn.AvgPool2d):
                    if m.divisor_override is not None:
                        raise UnsupportedError(f"layer {where!r}: AvgPool2d with divisor_override")
                    add(n, "avgpool", n.args[:1], _pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode, where,
                                                              count_include_pad=m.count_include_pad))
                elif isinstance(m, nn.AdaptiveAvgPool2d):
                    op, attrs = _adaptive(m.output_size, shape(n.args[0]), where)
                    if op == "identity":
                        names[n.name] = src(n.args[0], where)
                    else:
                        add(n, op, n.args[:1], attrs)
                elif isinstance(m, nn.Linear):
                    params = {"weight": _np(m.weight)}
                    if m.bias is not None:
                        params["bias"] = _np(m.bias)
                    add(n, "linear", n.args[:1], {}, params)
                elif (moved := _movement_module(m, shape(n.args[0]), where)) is not None:
                    add(n, moved[0], n.args[:1], moved[1])
                elif isinstance(m, nn.Flatten):
                    add(n, "flatten", n.args[:1])
                else:
                    raise UnsupportedError(f"layer {where!r}: module {type(m).__name__} is not supported "
                                           "(supported: Conv2d, Conv1d, ConvTranspose2d, BatchNorm2d / 1d, "
                                           "MaxPool2d, AvgPool2d, "
                                           "AdaptiveAvgPool2d, Linear, Flatten, Dropout, Identity, the padding, "
                                           "upsampling, shuffle and softmax modules and the "
                                           f"activations {', '.join(t.__name__ for t in _ACT_TYPES)})")
            elif n.op in ("call_function", "call_method"):
                if not _lower_value(n, values, shape, add, names):
                    _lower_call(n, add, names, src, shape, splits, values)
            elif n.op == "get_attr":  # a tensor the model holds: an operand of add / sub / mul / div
                values[n.name] = _np(functools.reduce(getattr, n.target.split("."), gm))
            else:
                raise UnsupportedError(f"{n.name}: fx op {n.op} ({n.target}) is not supported "
                                       "(parameters used directly in forward?)")
        except UnsupportedError as e:
            if on_unsupported is None or n.op == "placeholder":
                raise
            if n.op != "output":  # several outputs: the fallback's runner returns them all
                on_unsupported(n, e)
                meta = n.meta.get("tensor_meta")
                names[n.name] = unique_name(n.name, used)
                shapes[names[n.name]] = tuple(meta.shape[1:]) if hasattr(meta, "shape") else ()
    if on_unsupported is None and (out_name is None or out_name == INPUT):
        raise UnsupportedError("model output is its input (nothing to compile)")
    return Graph(tuple(int(s) for s in example.shape[1:]), nodes, out_name or INPUT)


BATCH = "N"  # the batch size in shape arithmetic: unknown when tracing, never a layer's size
_INT_OPS = {operator.floordiv: operator.floordiv, operator.mul: operator.mul, operator.add: operator.add,
            operator.sub: operator.sub}


def _lower_value(n, values: dict, shape, add, names: dict) -> bool:
    """Calls computing no tensor, recorded in ``values`` (fx name -> value): sizes (``x.size()``,
    ``x.shape``, their items, int arithmetic on them; the batch is ``BATCH``) and the channel
    shuffle idiom's 5-D view x.view(N, g, C / g, H, W) and its transpose(1, 2) (("grouped", source
    fx node, g, transposed)), until a view back to (N, C, H, W) adds the shuffle. True when ``n``
    was one of them."""
    t, a = n.target, list(n.args)

    def val(v):
        return values.get(v.name, v) if isinstance(v, torch.fx.Node) else v

    x = a[0] if a else None
    if t in ("size", getattr) and isinstance(x, torch.fx.Node) and x.name not in values:
        if (t is getattr and a[1] != "shape") or not _first_shape(n, shape):
            return False
        dims = (BATCH, *shape(x))
        values[n.name] = dims[a[1]] if t == "size" and len(a) > 1 else dims
    elif t is operator.getitem and isinstance(val(x), tuple) and isinstance(a[1], (int, slice)) and x.name in values \
            and val(x)[0] != "grouped":
        values[n.name] = val(x)[a[1]]
    elif t in _INT_OPS and len(a) == 2 and all(isinstance(val(v), (int, str)) and not isinstance(val(v), bool)
                                               and (not isinstance(v, torch.fx.Node) or v.name in values) for v in a):
        values[n.name] = BATCH if BATCH in map(val, a) else _INT_OPS[t](val(a[0]), val(a[1]))
    elif isinstance(val(x), tuple) and val(x)[0] == "grouped":
        _, source, g, tr = val(x)
        rest = [val(v) for v in (a[1:] if len(a) > 2 or not isinstance(a[1], (list, tuple)) else a[1])] \
            if len(a) > 1 else []
        C, H, W = shape(source)
        if t in ("transpose", torch.transpose) and sorted(d % 5 for d in rest) == [1, 2]:
            values[n.name] = ("grouped", source, g, not tr)
        elif t == "contiguous":
            values[n.name] = val(x)
        elif (t in ("view", "reshape", torch.reshape) and rest[1:] in ([C, H, W], [-1, H, W])) or \
                (t in ("flatten", torch.flatten) and rest[:2] == [1, 2]):
            if tr:
                add(n, "shuffle", [source], {"groups": g})
            else:
                names[n.name] = names[source.name]
        else:
            raise UnsupportedError(f"{n.name}: {t if isinstance(t, str) else t.__name__} of a 5-D channel-group "
                                   "view (only the channel shuffle idiom view -> transpose(1, 2) -> view is supported)")
    elif t in ("view", "reshape", torch.reshape) and isinstance(x, torch.fx.Node) and x.name not in values \
            and len(shape(x)) == 3:
        rest = [val(v) for v in (a[1] if len(a) == 2 and isinstance(a[1], (list, tuple)) else a[1:])]
        C, H, W = shape(x)
        if len(rest) != 5 or rest[3:] != [H, W] or not all(isinstance(v, int) for v in rest[1:3]) \
                or rest[1] < 1 or rest[1] * rest[2] != C and -1 not in rest[1:3]:
            return False
        values[n.name] = ("grouped", x, rest[1], False)
    else:
        return False
    return True


def _constant_operand(v, values: dict):
    """A number or a tensor the model holds (get_attr) as a float32 array, else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return np.float32(v)
    c = values.get(v.name) if isinstance(v, torch.fx.Node) else None
    return c if isinstance(c, (np.ndarray, int)) and not isinstance(c, bool) else None


def _lower_call(n, add, names, src, shape, splits, values) -> None:
    """call_function / call_method nodes: activations, add, flatten, pooling functions.
    ``splits``: fx name of a split / chunk -> (its input, [(start, channels)] per piece);
    ``values``: what ``_lower_value`` recorded (constants among them)."""
    t, where = n.target, n.name
    kw = n.kwargs
    is_add = t in _ADD_FUNCS or t in ("add", "add_", "__add__", "__iadd__")
    if (is_add or t in _BINARY_FUNCS) and len(n.args) == 2 and \
            any(_constant_operand(v, values) is not None for v in n.args):
        if kw.get("alpha", 1) != 1 or kw.get("rounding_mode") is not None:
            raise UnsupportedError(f"{where}: add / sub with alpha or div with rounding_mode")
        first = _constant_operand(n.args[1], values) is not None
        tensor, c = (n.args[0], n.args[1]) if first else (n.args[1], n.args[0])
        w, b = affine_of_constant("add" if is_add else _BINARY_FUNCS[t], _constant_operand(c, values), first,
                                  shape(tensor) if isinstance(tensor, torch.fx.Node) and tensor.name not in values
                                  else (), where)
        add(n, "affine", [tensor], {}, {"weight": w, "bias": b})
        return
    if t in _RELU_FUNCS or t in ("relu", "relu_"):
        add(n, "relu", n.args[:1])
    elif t is F.relu6 or (t is F.hardtanh and tuple(n.args[1:3]) == (0.0, 6.0)):
        add(n, "relu6", n.args[:1])
    elif _act_of_call(n) is not None:
        add(n, "act", n.args[:1], {"act": _act_of_call(n)})
    elif t in _ADD_FUNCS or t in ("add", "add_", "__add__", "__iadd__"):
        if kw.get("alpha", 1) != 1 or len(n.args) != 2:
            raise UnsupportedError(f"{where}: add with alpha or more than two operands")
        add(n, "add", n.args)
    elif t in _BINARY_FUNCS:
        if len(n.args) != 2 or kw.get("alpha", 1) != 1 or kw.get("rounding_mode") is not None:
            raise UnsupportedError(f"{where}: {_BINARY_FUNCS[t]} with alpha, rounding_mode or other than two operands")
        add(n, "binary", n.args, {"op": _BINARY_FUNCS[t]})
    elif t in ("view", "reshape", "unsqueeze", torch.reshape, torch.unsqueeze) and \
            _same_layout_shape(t, list(n.args[1:]), shape(n.args[0])) is not None:
        add(n, "reshape", n.args[:1], {"shape": _same_layout_shape(t, list(n.args[1:]), shape(n.args[0]))})
    elif t is torch.flatten or t in ("flatten", "view", "reshape"):
        if not _flattens_per_image(t, list(n.args[1:]), kw, int(np.prod(shape(n.args[0])))):
            raise UnsupportedError(f"{where}: {t if isinstance(t, str) else t.__name__}"
                                   f"{tuple(a if not hasattr(a, 'name') else a.name for a in n.args[1:])} "
                                   "(only flattening each image to a vector is supported)")
        add(n, "flatten", n.args[:1])
    elif t in (torch.cat, torch.concat, torch.concatenate):
        parts, dim = (n.args[0], n.args[1] if len(n.args) > 1 else kw.get("dim", 0))
        if len(shape(parts[0])) != 3 or dim not in (1, -3):
            raise UnsupportedError(f"{where}: cat along dim {dim}; only the channel dim of (N, C, H, W) is supported")
        add(n, "concat", list(parts))
    elif t in (torch.chunk, torch.split, "chunk", "split"):
        sizes = n.args[1] if len(n.args) > 1 else kw.get("split_size_or_sections", kw.get("chunks"))
        dim = n.args[2] if len(n.args) > 2 else kw.get("dim", 0)
        c = shape(n.args[0])[0] if len(shape(n.args[0])) == 3 else 0
        if not c or dim not in (1, -3) or not isinstance(sizes, (int, list, tuple)):
            raise UnsupportedError(f"{where}: {t if isinstance(t, str) else t.__name__} along dim {dim}; "
                                   "only constant splits of the channel dim of (N, C, H, W) are supported")
        if isinstance(sizes, int):  # chunk: a count; split: a size
            step = -(-c // sizes) if t in (torch.chunk, "chunk") else sizes
            sizes = [min(step, c - s) for s in range(0, c, step)]
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        splits[n.name] = (n.args[0], list(zip(starts, sizes)))
    elif t is operator.getitem and isinstance(n.args[0], torch.fx.Node) and n.args[0].name in splits:
        source, ranges = splits[n.args[0].name]
        start, size = ranges[n.args[1]]
        add(n, "slice", [source], {"start": int(start), "channels": int(size)})
    elif t == "size" or t is getattr:
        names[n.name] = "__shape__"  # a size read without a shape known: only view arguments use it
    elif t in (F.dropout, torch.dropout) or t == "contiguous":
        names[n.name] = src(n.args[0], where)
    elif t is F.adaptive_avg_pool2d:
        op, attrs = _adaptive(n.args[1] if len(n.args) > 1 else kw["output_size"], shape(n.args[0]), where)
        if op == "identity":
            names[n.name] = src(n.args[0], where)
        else:
            add(n, op, n.args[:1], attrs)
    elif t == "mean" or t is torch.mean:
        dims = n.args[1] if len(n.args) > 1 else kw.get("dim")
        if dims is None or sorted(d % 4 for d in (dims if isinstance(dims, (list, tuple)) else [dims])) != [2, 3]:
            raise UnsupportedError(f"{where}: mean over dims {dims} (only spatial mean is supported)")
        add(n, "gap", n.args[:1])
    elif (moved := _movement_call(n, _first_shape(n, shape), where,
                                  lambda v: values.get(v.name, v) if isinstance(v, torch.fx.Node) else v)) is not None:
        add(n, moved[0], n.args[:1], moved[1])
    elif t is F.max_pool2d or t is F.avg_pool2d:
        # max_pool2d(x, k, stride, padding, dilation, ceil_mode); avg_pool2d(x, k, stride, padding,
        # ceil_mode, count_include_pad, divisor_override)
        a = list(n.args) + [None] * 7
        k = kw.get("kernel_size", a[1])
        s = kw.get("stride", a[2])
        p = kw.get("padding", a[3] or 0)
        if t is F.max_pool2d:
            attrs = _pool_attrs(k, s, p, kw.get("ceil_mode", a[5] or False), where, kw.get("dilation", a[4] or 1))
        else:
            if kw.get("divisor_override", a[6]) is not None:
                raise UnsupportedError(f"{where}: avg_pool2d with divisor_override")
            include = kw.get("count_include_pad", True if a[5] is None else a[5])
            attrs = _pool_attrs(k, s, p, kw.get("ceil_mode", a[4] or False), where, count_include_pad=include)
        add(n, "maxpool" if t is F.max_pool2d else "avgpool", n.args[:1], attrs)
    else:
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        raise UnsupportedError(f"op {name!r} at {where!r} is not supported by the compiler")


def pad_attrs(pads, mode: str, value, where: str) -> dict:
    """A pad node's attributes from (top, left, bottom, right) sizes, PyTorch's or ONNX's mode
    name and the constant."""
    mode = {"edge": "replicate"}.get(mode, mode)
    if mode not in movement.PAD_MODES:
        raise UnsupportedError(f"{where}: padding mode {mode!r}; only {movement.PAD_MODES} are supported")
    if mode != "constant" and min(pads) < 0:
        raise UnsupportedError(f"{where}: {mode} padding with negative sizes {tuple(pads)}")
    return {"pads": [int(p) for p in pads], "mode": mode, "value": float(np.float32(value or 0.0))}


def resize_attrs(in_shape: tuple, size, scales, mode: str, align_corners, where: str) -> dict:
    """A resize node's attributes: the output ``size`` (H, W), or the one PyTorch computes from
    ``scales`` (floor of size times scale), which then also round the source indices."""
    if len(in_shape) != 3:
        raise UnsupportedError(f"{where}: resize of a tensor of shape {in_shape} (needs C, H, W)")
    if mode not in movement.RESIZE_MODES:
        raise UnsupportedError(f"{where}: resize mode {mode!r}; only {movement.RESIZE_MODES} are supported")
    attrs = {"mode": mode, "align_corners": bool(align_corners) if mode == "bilinear" else False}
    if size is not None:
        if not isinstance(size, (int, list, tuple)):
            raise UnsupportedError(f"{where}: resize to a size computed in the graph ({size})")
        size = [size, size] if isinstance(size, int) else list(size)
    else:
        scales = [float(scales)] * 2 if isinstance(scales, (int, float)) else [float(v) for v in scales]
        size = [int(np.floor(float(n) * f)) for n, f in zip(in_shape[1:], scales)]
        attrs["scales"] = scales
    if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise UnsupportedError(f"{where}: resize to {size} (needs two sizes >= 1)")
    return {**attrs, "size": size}


def softmax_attrs(dim, in_shape: tuple, log: bool, where: str) -> dict:
    """(log-)softmax over the channels of (N, C, H, W) or the features of (N, F); other dims
    are an UnsupportedError."""
    rank = len(in_shape) + 1
    if not isinstance(dim, int) or rank not in (2, 4) or dim % rank != 1:
        raise UnsupportedError(f"{where}: softmax over dim {dim} of a rank-{rank} tensor; only the channel "
                               "dim of (N, C, H, W) or the features of (N, F)")
    return {"log": log}


def _movement_module(m: nn.Module, in_shape: tuple, where: str) -> tuple[str, dict] | None:
    """(op, attrs) of a padding, upsampling, shuffle or softmax module, else None."""
    if isinstance(m, (nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
        left, right, top, bottom = m.padding
        mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}.get(type(m), "constant")
        return "pad", pad_attrs((top, left, bottom, right), mode, getattr(m, "value", 0.0), where)
    if isinstance(m, nn.Upsample):
        if m.recompute_scale_factor:
            raise UnsupportedError(f"layer {where!r}: Upsample with recompute_scale_factor")
        return "resize", resize_attrs(in_shape, m.size, m.scale_factor, m.mode, m.align_corners, f"layer {where!r}")
    if isinstance(m, nn.PixelShuffle):
        return "pixel_shuffle", {"r": _pair(m.upscale_factor, "upscale factor", where)}
    if isinstance(m, nn.ChannelShuffle):
        return "shuffle", {"groups": _pair(m.groups, "groups", where)}
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return "softmax", softmax_attrs(m.dim, in_shape, isinstance(m, nn.LogSoftmax), f"layer {where!r}")
    return None


def _first_shape(n, shape) -> tuple:
    """The per-image shape of a call's first argument; () when it is no tensor (a size, a constant)."""
    try:
        return shape(n.args[0]) if n.args and isinstance(n.args[0], torch.fx.Node) else ()
    except KeyError:  # a value capture keeps no shape of (x.size(), a split's tuple)
        return ()


def _movement_call(n, in_shape: tuple, where: str, val=lambda v: v) -> tuple[str, dict] | None:
    """(op, attrs) of F.pad, F.interpolate, pixel / channel shuffle and (log_)softmax calls
    (functions and methods), else None; ``val`` resolves an argument computed from sizes
    (``size=x.shape[2:]``)."""
    t, a = n.target, [val(v) for v in n.args] + [None] * 6
    kw = {k: val(v) for k, v in n.kwargs.items()}
    if t is F.pad:
        pad, mode, value = kw.get("pad", a[1]), kw.get("mode", a[2] or "constant"), kw.get("value", a[3])
        if not isinstance(pad, (list, tuple)) or len(pad) not in (2, 4) or len(in_shape) != 3:
            raise UnsupportedError(f"{where}: pad {pad} of a tensor of shape {in_shape}; only the last two "
                                   "dims of (N, C, H, W)")
        left, right, top, bottom = (*pad, 0, 0)[:4]
        return "pad", pad_attrs((top, left, bottom, right), mode, value, where)
    if t in (F.interpolate, F.upsample):
        if kw.get("recompute_scale_factor", a[5]) or kw.get("antialias", False):
            raise UnsupportedError(f"{where}: interpolate with recompute_scale_factor or antialias")
        return "resize", resize_attrs(in_shape, kw.get("size", a[1]), kw.get("scale_factor", a[2]),
                                      kw.get("mode", a[3] or "nearest"), kw.get("align_corners", a[4]), where)
    if t in (F.pixel_shuffle, torch.pixel_shuffle):
        return "pixel_shuffle", {"r": _pair(kw.get("upscale_factor", a[1]), "upscale factor", where)}
    if t in (F.channel_shuffle, torch.channel_shuffle, torch.native_channel_shuffle):
        return "shuffle", {"groups": _pair(kw.get("groups", a[1]), "groups", where)}
    if t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"):
        if kw.get("dtype", a[3] if t in (F.softmax, F.log_softmax) else a[2]) not in (None, torch.float32):
            raise UnsupportedError(f"{where}: softmax with dtype {kw.get('dtype')}")
        log = t in (F.log_softmax, torch.log_softmax, "log_softmax")
        return "softmax", softmax_attrs(kw.get("dim", a[1]), in_shape, log, where)
    return None


_ACT_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.Sigmoid,
              nn.Hardsigmoid, nn.Tanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Softplus)


def _gelu(approximate: str, where: str) -> str:
    if approximate != "none":
        raise UnsupportedError(f"layer {where!r}: GELU(approximate={approximate!r}); only the exact erf form "
                               "is supported")
    return "gelu"


def _act_of_module(m: nn.Module, where: str) -> str | None:
    """The activation string (codegen/activations.py) of an activation module, else None."""
    if isinstance(m, nn.Hardtanh):
        return activations.spec("clip", m.min_val, m.max_val)
    if isinstance(m, nn.PReLU):  # one slope for all channels (several: the prelu op)
        return activations.spec("leaky_relu", float(m.weight.detach().reshape(-1)[0]))
    if isinstance(m, nn.LeakyReLU):
        return activations.spec("leaky_relu", m.negative_slope)
    if isinstance(m, nn.ELU):
        return activations.spec("elu", m.alpha)
    if isinstance(m, nn.Hardsigmoid):
        return activations.spec("hardsigmoid", 1.0 / 6.0, 0.5)
    if isinstance(m, nn.Softplus):
        return activations.spec("softplus", m.beta, m.threshold)
    if isinstance(m, nn.GELU):
        return _gelu(m.approximate, where)
    return {nn.SELU: "selu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu",
            nn.Hardswish: "hardswish"}.get(type(m))


_PLAIN_ACT_FUNCS = {F.selu: "selu", torch.selu: "selu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
                    torch.tanh: "tanh", F.tanh: "tanh", F.silu: "silu", F.hardswish: "hardswish",
                    "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh"}


def _act_of_call(n) -> str | None:
    """The activation string of an activation function / method call (constant parameters
    only), else None."""
    t, where = n.target, n.name

    def arg(i: int, key: str, default):
        v = n.args[i] if len(n.args) > i else n.kwargs.get(key, default)
        if isinstance(v, torch.fx.Node):
            raise UnsupportedError(f"{where}: {key} computed in the graph; only a constant is supported")
        return default if v is None else v

    if isinstance(t, str) and t not in _PLAIN_ACT_FUNCS and t not in ("clamp", "clamp_", "clip"):
        return None
    if t in _PLAIN_ACT_FUNCS:
        return _PLAIN_ACT_FUNCS[t]
    if t is F.leaky_relu:
        return activations.spec("leaky_relu", arg(1, "negative_slope", 0.01))
    if t is F.elu:
        return activations.spec("elu", arg(1, "alpha", 1.0))
    if t is F.hardsigmoid:
        return activations.spec("hardsigmoid", 1.0 / 6.0, 0.5)
    if t is F.softplus:
        return activations.spec("softplus", arg(1, "beta", 1.0), arg(2, "threshold", 20.0))
    if t is F.gelu:
        return _gelu(n.kwargs.get("approximate", "none"), where)
    if t is F.hardtanh:
        return activations.spec("clip", arg(1, "min_val", -1.0), arg(2, "max_val", 1.0))
    if t in (torch.clamp, torch.clip, "clamp", "clamp_", "clip"):
        return activations.spec("clip", arg(1, "min", -np.inf), arg(2, "max", np.inf))
    return None


def _same_layout_shape(t, rest: list, in_shape: tuple) -> list[int] | None:
    """The per-image shape a view / reshape / unsqueeze gives when it is stored exactly as its
    input is ((C,) <-> (C, 1, 1): a squeeze-excite gate), else None."""
    if t in ("unsqueeze", torch.unsqueeze):
        if len(rest) != 1 or not isinstance(rest[0], int) or rest[0] % (len(in_shape) + 2) == 0:
            return None
        out = list(in_shape)
        out.insert(rest[0] % (len(in_shape) + 2) - 1, 1)
    else:
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            rest = list(rest[0])
        if len(rest) < 2 or not all(isinstance(d, int) for d in rest[1:]):
            return None
        out = list(rest[1:])
        if out.count(-1) == 1:
            known = int(np.prod([d for d in out if d != -1]))
            out[out.index(-1)] = int(np.prod(in_shape)) // max(1, known)
    if len(out) > 3 or int(np.prod(out)) != int(np.prod(in_shape)):
        return None
    return out if spatial(tuple(out)) == spatial(in_shape) else None


def _flattens_per_image(t, rest: list, kw: dict, features: int) -> bool:
    """Whether flatten/view/reshape arguments turn (N, ...) into (N, features)."""
    if t is torch.flatten or t == "flatten":
        start = rest[0] if rest else kw.get("start_dim", 0)
        end = rest[1] if len(rest) > 1 else kw.get("end_dim", -1)
        return start == 1 and end == -1
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    if len(rest) != 2:
        return False
    batch_ok = not isinstance(rest[0], int) or rest[0] in (-1, 1) or rest[1] != -1
    return batch_ok and (rest[1] == -1 or rest[1] == features)


def out_shape(op: str, attrs: dict, params: dict, ins: list[tuple], where: str) -> tuple:
    """Per-image output shape of an IR op from its inputs' shapes (errors name the layer). A 1-D
    signal (C, L) is computed on as (C, 1, L) (layout.spatial) and stays (C', L')."""
    if any(len(s) == 2 for s in ins):
        if op in ("maxpool", "avgpool", "resize", "pixel_shuffle", "phases"):
            raise UnsupportedError(f"{where}: {op} of a 1-D signal {ins[0]} (only of (C, H, W))")
        y = _out_shape(op, attrs, params, [spatial(s) for s in ins], where)
        return (y[0], y[2]) if len(y) == 3 and y[1] == 1 else y
    return _out_shape(op, attrs, params, ins, where)


def _out_shape(op: str, attrs: dict, params: dict, ins: list[tuple], where: str) -> tuple:
    x = ins[0]
    if op in ("conv", "maxpool", "avgpool", "bn", "gap") and len(x) != 3:
        raise UnsupportedError(f"{where}: {op} on a tensor of shape {x} (needs C, H, W)")
    if op == "conv":
        w = params["weight"]
        if w.shape[1] * attrs["groups"] != x[0]:
            raise InputError(f"{where}: conv expects {w.shape[1] * attrs['groups']} input channels, gets {x[0]}")
    if op in ("maxpool", "avgpool"):
        opts = {"dilation": attrs.get("dilation", 1), "ceil_mode": attrs.get("ceil_mode", False), "where": where}
        return (x[0], *(pool_out_size(x[i], attrs["k"], attrs["stride"], attrs["padding"], **opts) for i in (1, 2)))
    if op == "conv":
        k, s, p = attrs["k"], attrs["stride"], attrs["padding"]
        h, w_ = (x[1] + 2 * p - k) // s + 1, (x[2] + 2 * p - k) // s + 1
        if h < 1 or w_ < 1:
            raise InputError(f"{where}: {op} with kernel {k}, stride {s}, padding {p} on {x[1]}x{x[2]} "
                             "gives an empty output")
        return (params["weight"].shape[0], h, w_)
    if op == "gap":
        return (x[0], 1, 1)
    if op in ("flatten", "linear"):
        feats = int(np.prod(x))
        if op == "flatten":
            return (feats,)
        if params["weight"].shape[1] != feats:
            raise InputError(f"{where}: Linear expects {params['weight'].shape[1]} features, gets {feats}")
        return (params["weight"].shape[0],)
    if op == "prelu" and params["weight"].size != x[0]:
        raise InputError(f"{where}: PReLU has {params['weight'].size} slopes for {x[0]} channels")
    if op == "reshape":
        return tuple(attrs["shape"])
    if op in ("concat", "slice") and any(len(s) != 3 or s[1:] != x[1:] for s in ins):
        raise UnsupportedError(f"node {where!r}: {op} along channels of per-image shapes {ins} "
                               "(needs (C, H, W) tensors of one H x W)")
    if op in ("pad", "resize", "pixel_shuffle", "shuffle", "phases") and len(x) != 3:
        raise UnsupportedError(f"{where}: {op} on a tensor of shape {x} (needs C, H, W)")
    if op == "pad":
        t, left, b, r = attrs["pads"]
        dh, dw = attrs.get("dilation", (1, 1))
        h, w = (x[1] - 1) * dh + 1 + t + b, (x[2] - 1) * dw + 1 + left + r
        if h < 1 or w < 1:
            raise InputError(f"{where}: padding {attrs['pads']} leaves nothing of {x[1]}x{x[2]}")
        return (x[0], h, w)
    if op == "resize":
        return (x[0], *attrs["size"])
    if op == "phases":
        d, s, (h, w) = attrs["d"], attrs["half"], attrs["size"]
        mosaic = tuple(movement.mosaic_size(n, d, s, attrs["packed"]) for n in (h, w))
        if tuple(x[1:]) != ((mosaic[0] - 2 * s, mosaic[1] - 2 * s) if attrs["inverse"] else (h, w)):
            raise InputError(f"{where}: phase mosaic of {h}x{w} with d={d} does not fit an input of {x[1]}x{x[2]}")
        return (x[0], h, w) if attrs["inverse"] else (x[0], *mosaic)
    if op == "pixel_shuffle":
        r = attrs["r"]
        if x[0] % (r * r):
            raise InputError(f"{where}: pixel shuffle by {r} of {x[0]} channels (not a multiple of {r * r})")
        return (x[0] // (r * r), x[1] * r, x[2] * r)
    if op == "shuffle" and x[0] % attrs["groups"]:
        raise InputError(f"{where}: channel shuffle of {x[0]} channels in {attrs['groups']} groups")
    if op == "concat":
        return (sum(s[0] for s in ins), *x[1:])
    if op == "slice":
        return (attrs["channels"], *x[1:])
    if op in ("add", "binary") and ins[0] != ins[1]:
        a, b = ins
        if len(a) != len(b) or len(a) == 2 or any(p != q and 1 not in (p, q) for p, q in zip(a, b)):
            raise UnsupportedError(f"node {where!r}: {attrs.get('op', op)} of per-image shapes {a} and {b} "
                                   "(they do not broadcast against each other)")
        return tuple(max(p, q) for p, q in zip(a, b))
    return x


# ------------------------------------------------------------------------------------------
# ONNX

_ONNX_ACT = ("Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish", "Gelu",
             "Softplus")


def _onnx_act(op: str, attr, where: str) -> str:
    """The activation string of an ONNX activation node; ``attr(key, default)`` reads its
    attributes (defaults per the ONNX spec)."""
    if op == "Selu":
        alpha, gamma = attr("alpha", 1.67326319217681884765625), attr("gamma", 1.05070102214813232421875)
        if abs(alpha - activations.SELU_ALPHA) > 1e-6 or abs(gamma - activations.SELU_SCALE) > 1e-6:
            raise UnsupportedError(f"{where}: Selu(alpha={alpha}, gamma={gamma}); only the standard "
                                   "constants are supported")
        return "selu"
    if op == "Gelu" and attr("approximate", b"none") not in (b"none", "none"):
        raise UnsupportedError(f"{where}: Gelu with approximate={attr('approximate')!r}; only the exact form")
    return {"Relu": lambda: "relu", "Sigmoid": lambda: "sigmoid", "Tanh": lambda: "tanh",
            "HardSwish": lambda: "hardswish", "Gelu": lambda: "gelu",
            "Softplus": lambda: activations.spec("softplus", 1.0, 20.0),  # = log(exp(x) + 1) in float32
            "LeakyRelu": lambda: activations.spec("leaky_relu", attr("alpha", 0.01)),
            "Elu": lambda: activations.spec("elu", attr("alpha", 1.0)),
            "HardSigmoid": lambda: activations.spec("hardsigmoid", attr("alpha", 0.2), attr("beta", 0.5)),
            }[op]()


def _onnx_pads(auto_pad, pads: list, size: tuple, kernel: tuple, strides: list, dils: tuple) -> tuple:
    """(top, left, bottom, right) of an ONNX Conv: its pads, or what auto_pad makes of them
    (SAME_UPPER puts an odd extra row / column last, SAME_LOWER first)."""
    mode = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if mode == "NOTSET":
        return tuple(pads)
    if mode == "VALID":
        return (0, 0, 0, 0)
    total = [max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0) for n, k, s, d in zip(size, kernel, strides, dils)]
    first = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in total]
    return (first[0], first[1], total[0] - first[0], total[1] - first[1])


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _onnx_movement(n, attr, consts: dict, x: tuple, opset: int, where: str) -> tuple[str, dict]:
    """(op, attrs) of an ONNX Pad, Resize, DepthToSpace, Softmax or LogSoftmax reading a tensor
    of per-image shape ``x``; ``attr(key, default)`` reads the node's attributes."""
    op = n.op_type

    def const(i: int):
        if len(n.input) <= i or not n.input[i]:
            return None
        if n.input[i] not in consts:
            raise UnsupportedError(f"{where}: {op} with an input computed from the model's data")
        return np.ravel(consts[n.input[i]])

    if op in ("Softmax", "LogSoftmax"):
        axis = attr("axis", -1 if opset >= 13 else 1)
        if opset < 13 and len(x) == 3 and x[1:] != (1, 1) and axis % 4 == 1:  # old: over C*H*W
            raise UnsupportedError(f"{where}: {op} (opset {opset}) over the flattened C, H, W")
        return "softmax", softmax_attrs(int(axis), x, op == "LogSoftmax", where)
    if op == "DepthToSpace":
        if _text(attr("mode", "DCR")) != "CRD":
            raise UnsupportedError(f"{where}: DepthToSpace in mode {_text(attr('mode', 'DCR'))} (only CRD, "
                                   "PyTorch's pixel_shuffle)")
        return "pixel_shuffle", {"r": _pair(attr("blocksize"), "blocksize", where)}
    if op == "Pad":
        pads = const(1) if opset >= 11 else np.asarray(attr("pads", []))
        value = const(2) if opset >= 11 else np.asarray([attr("value", 0.0)])
        if pads is None or len(pads) != 8 or any(pads[[0, 1, 4, 5]]) or const(3) is not None:
            raise UnsupportedError(f"{where}: Pad {None if pads is None else pads.tolist()}; only the spatial "
                                   "dims of (N, C, H, W)")
        t, left, b, r = (int(pads[i]) for i in (2, 3, 6, 7))
        return "pad", pad_attrs((t, left, b, r), _text(attr("mode", "constant")),
                                0.0 if value is None or not value.size else float(value[0]), where)
    # Resize (opset >= 11: X, roi, scales, sizes)
    mode, ctm = _text(attr("mode", "nearest")), _text(attr("coordinate_transformation_mode", "half_pixel"))
    if opset < 11 or attr("antialias", 0) or attr("exclude_outside", 0) or attr("axes") is not None \
            or _text(attr("keep_aspect_ratio_policy", "stretch")) != "stretch" or len(x) != 3:
        raise UnsupportedError(f"{where}: Resize with options beyond mode and coordinate mapping")
    scales, sizes = const(2), const(3)
    if sizes is not None and sizes.size:
        size, sc = [int(v) for v in sizes[2:]], None
        fixed = sizes[:2].tolist()
    elif scales is not None and scales.size == 4:
        size, sc = None, [float(v) for v in scales[2:]]
        fixed = scales[:2].tolist()
    else:
        raise UnsupportedError(f"{where}: Resize without constant scales or sizes")
    if fixed[1:] != [1] and fixed[1:] != [x[0]] or fixed[0] not in (1, 0) and sizes is None:
        raise UnsupportedError(f"{where}: Resize of the batch or channel dims")
    if mode == "nearest":
        out = size or [int(np.floor(n * f)) for n, f in zip(x[1:], sc)]
        if ctm != "asymmetric" or _text(attr("nearest_mode", "round_prefer_floor")) != "floor" \
                or any(o % i for o, i in zip(out, x[1:])):
            raise UnsupportedError(f"{where}: nearest Resize other than PyTorch's (asymmetric, floor, an "
                                   "integer factor)")
        return "resize", resize_attrs(x, out, None, "nearest", False, where)
    if mode != "linear" or ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise UnsupportedError(f"{where}: Resize mode {mode} with {ctm} coordinates (supported: nearest, "
                               "linear with half_pixel, pytorch_half_pixel or align_corners)")
    attrs = resize_attrs(x, size, sc, "bilinear", ctm == "align_corners", where)
    if ctm != "align_corners" and min(attrs["size"]) == 1:
        raise UnsupportedError(f"{where}: linear Resize to a size of 1 ({ctm} differs from PyTorch there)")
    return "resize", attrs


def _shuffle_idiom(n, grouped: dict, names: dict, full_shape, consts: dict, attr) -> str | None:
    """Whether ONNX node ``n`` (a Reshape or Transpose) is a step of the channel shuffle idiom
    Reshape (N, C, H, W) -> (N, g, C / g, H, W), Transpose(0, 2, 1, 3, 4), Reshape back: "view"
    for the first two (recorded in ``grouped``: value -> (source, g, transposed)), "back" for
    the last, None otherwise."""
    x = n.input[0]
    if n.op_type == "Transpose" and x in grouped and list(attr(n, "perm", [])) == [0, 2, 1, 3, 4]:
        src, g, tr = grouped[x]
        grouped[n.output[0]] = (src, g, not tr)
        return "view"
    if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in consts:
        return None
    if x in grouped:
        src, g, tr = grouped[x]
        N, C, H, W = full_shape(src)
        dims = (N, C // g, g, H, W) if tr else (N, g, C // g, H, W)
        return "back" if onnx_const.reshaped(dims, consts[n.input[1]]) == full_shape(src) else None
    d = full_shape(x) or ()
    if x not in names or len(d) != 4:
        return None
    t = onnx_const.reshaped(d, consts[n.input[1]])
    if t is None or len(t) != 5 or t[0] != d[0] or t[3:] != d[2:] or t[1] * t[2] != d[1]:
        return None
    grouped[n.output[0]] = (x, t[1], False)
    return "view"


def affine_of_constant(op: str, c: np.ndarray, tensor_first: bool, x: tuple, where: str) -> tuple:
    """(weight, bias) per channel of ``x op c`` (``c op x`` unless ``tensor_first``) for a
    constant ``c`` that is one value or one per channel (C, 1, 1) of (C, H, W) / per feature of a
    vector: an ``affine`` node. A constant with a spatial extent, or c / x, is an UnsupportedError."""
    if not x:
        raise UnsupportedError(f"{where}: {op} of two constants")
    c = np.asarray(c, np.float32)
    C = x[0]
    lead = c.reshape(c.shape[1:]) if c.ndim == len(x) + 1 and c.shape[0] == 1 else c  # drop a batch dim of 1
    if c.size == 1:
        v = np.full(C, c.reshape(-1)[0], np.float32)
    elif lead.ndim == len(x) and lead.shape[0] == C and lead.size == C:
        v = lead.reshape(-1).astype(np.float32)
    else:
        raise UnsupportedError(f"{where}: {op} with a constant of shape {c.shape} (one value or one per "
                               f"channel of {x} is supported)")
    one, zero = np.ones(C, np.float32), np.zeros(C, np.float32)
    if op == "div" and not tensor_first:
        raise UnsupportedError(f"{where}: a constant divided by a tensor")
    w, b = {"add": (one, v), "mul": (v, zero), "div": (1.0 / v, zero),
            "sub": (one, -v) if tensor_first else (-one, v)}[op]
    return w.astype(np.float32), b.astype(np.float32)


def _silu_muls(g) -> dict:
    """Sigmoid output -> the Mul computing x * sigmoid(x) from it, where that Mul is its only
    reader (the SiLU idiom of ONNX exporters)."""
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = {}
    for n in g.node:
        r = readers.get(n.output[0], [])
        if n.op_type == "Sigmoid" and len(r) == 1 and r[0].op_type == "Mul" \
                and sorted(r[0].input) == sorted([n.input[0], n.output[0]]):
            out[n.output[0]] = r[0]
    return out


def capture_onnx(path: str | Path, *, on_unsupported=None) -> Graph:
    """Lower an ONNX file (opset >= 11 conv nets as torch.onnx exports them) to the IR.

    ``on_unsupported(onnx_node, error)``: as for ``capture_torch`` (the outputs of a node the
    IR cannot express take the file's inferred shapes, and lowering goes on past it)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise FormatError(f"{path}: not a readable ONNX file ({e})") from e
    model = shape_inference.infer_shapes(model, data_prop=True)
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32, copy=False) for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    known = {**{t.name: numpy_helper.to_array(t) for t in g.initializer}, **consts}  # own dtypes
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [1])
    grouped: dict[str, tuple] = {}  # a channel-shuffle idiom's 5-D view: (source, groups, transposed)
    real_inputs = [i for i in g.input if i.name not in inits]
    if len(real_inputs) != 1:
        raise UnsupportedError(f"{path}: {len(real_inputs)} graph inputs; exactly one is supported")
    shapes, full = {}, {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name], full[vi.name] = tuple(dims[1:]), tuple(dims)
    in_shape = shapes[real_inputs[0].name]
    if real_inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise UnsupportedError(f"{path}: input of type {onnx.TensorProto.DataType.Name(real_inputs[0].type.tensor_type.elem_type)}; "
                               "only float32 inputs are supported")
    if len(in_shape) not in (1, 2, 3) or not all(in_shape):
        raise UnsupportedError(f"{path}: input shape {in_shape} must be a static (N, C, H, W), (N, C, L) or "
                               "(N, features)")
    names = {real_inputs[0].name: INPUT}
    nodes: list[Node] = []
    batch = full[real_inputs[0].name][0] or 1

    def full_shape(v: str) -> tuple | None:
        """Dims of tensor ``v`` with the batch: the file's when static, else the ones computed here."""
        d = full.get(v, ())
        if d and all(d):
            return d
        return (batch, *ir_shapes[names[v]]) if v in names and names[v] in ir_shapes else None

    def attr(n, key, default=None):
        for a in n.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    used: set[str] = {INPUT}

    ir_shapes: dict[str, tuple] = {INPUT: tuple(in_shape)}

    def emit(n, op, inputs, attrs=None, params=None, output=None):
        """One IR node for ONNX node ``n`` writing ``output`` (default its first output)."""
        output = output or n.output[0]
        name = unique_name(n.name if n.name and output == n.output[0] else output, used)
        where = f"{path}: node {name!r}"
        missing = [i for i in inputs if i not in names]
        if missing or output in names:
            raise FormatError(f"{where} reads {missing[0]!r}, which no earlier node writes" if missing
                              else f"{where} writes {output!r}, which another node writes too")
        ins = [names[i] for i in inputs]
        # shapes are computed from the input, never taken from the file's shape annotations
        out = out_shape(op, attrs or {}, params or {}, [ir_shapes[i] for i in ins], where)
        declared = shapes.get(output)
        if declared and all(declared) and tuple(declared) != out:
            raise FormatError(f"{where}: the file says its output is {declared}, its input and "
                              f"weights give {out}")
        for k, v in (params or {}).items():
            want = {"conv": 4, "linear": 2}.get(op, 1) if k == "weight" else 1
            rows = out[0] if k in ("bias", "weight") else ir_shapes[ins[0]][0]
            if v.ndim != want or v.shape[0] != rows or (op == "conv" and k == "weight" and
                                                         v.shape[2:] != (attrs["k"], attrs["k"])):
                raise FormatError(f"{where}: {k} of shape {v.shape} does not fit a {op} with output {out}")
        nodes.append(Node(name, op, ins, out, attrs or {}, params or {}))
        ir_shapes[name] = out
        names[output] = name

    def sym(pads, where):
        if pads and (len(set(pads)) != 1):
            raise UnsupportedError(f"{where}: asymmetric pads {pads}")
        return _pair(pads[0] if pads else 0, "padding", where)

    silu_mul = _silu_muls(g)
    skip: set[int] = set()  # nodes already lowered with the one before them
    for n in g.node:
        try:
            where, op = n.name or n.output[0], n.op_type
            if op == "Constant" or id(n) in skip:
                continue
            folded = onnx_const.fold(n, known, full_shape, model.opset_import)
            if folded is not None:  # shape arithmetic: its outputs are constants from here on
                for out, v in zip(n.output, folded):
                    known[out] = consts[out] = v
                    if v.dtype.kind == "f":
                        inits[out] = v.astype(np.float32)
                continue
            idiom = _shuffle_idiom(n, grouped, names, full_shape, consts, attr) if op in ("Reshape", "Transpose") else None
            if idiom == "view":
                continue
            if idiom == "back":
                src, groups, transposed = grouped[n.input[0]]
                if transposed:
                    emit(n, "shuffle", [src], {"groups": groups})
                else:
                    names[n.output[0]] = names[src]
                continue
            if any(i in grouped for i in n.input):
                raise UnsupportedError(f"{where}: {op} of a 5-D channel-group view (only the channel shuffle "
                                       "idiom Reshape -> Transpose(0, 2, 1, 3, 4) -> Reshape is supported)")
            if op == "Conv":
                w = inits[n.input[1]]
                bias = inits[n.input[2]].copy() if len(n.input) > 2 and n.input[2] else None
                if w.ndim == 3 and _text(attr(n, "auto_pad", "NOTSET")) == "NOTSET":
                    p = list(attr(n, "pads", [0, 0]))
                    pre, attrs, params, post = conv1d_nodes(w, bias, int(attr(n, "strides", [1])[0]), (p[0], p[1]),
                                                            int(attr(n, "dilations", [1])[0]),
                                                            int(attr(n, "group", 1)), where)
                    if pre is not None:
                        emit(n, "pad", n.input[:1], pre, output=n.output[0] + "#pad")
                    emit(n, "conv", [n.output[0] + "#pad"] if pre else n.input[:1], attrs, params,
                         output=n.output[0] + "#same" if post else None)
                    if post is not None:
                        emit(n, "pad", [n.output[0] + "#same"], post)
                    continue
                if w.ndim != 4:
                    raise UnsupportedError(f"{where}: {w.ndim - 2}-D Conv (only 1-D and 2-D are supported)")
                strides, dils = list(attr(n, "strides", [1, 1])), tuple(attr(n, "dilations", [1, 1]))
                pads = _onnx_pads(attr(n, "auto_pad", b"NOTSET"), list(attr(n, "pads", [0, 0, 0, 0])),
                                  shapes[n.input[0]][1:], w.shape[2:], strides, dils)
                phased = dilated_as_phases(w, bias, strides, pads, dils, int(attr(n, "group", 1)),
                                           ir_shapes[names[n.input[0]]], where)
                if phased and phased[0] is None:
                    emit(n, "conv", n.input[:1], phased[1], phased[2])
                    continue
                if phased:
                    emit(n, "phases", n.input[:1], phased[0], output=n.output[0] + "#phases")
                    emit(n, "conv", [n.output[0] + "#phases"], phased[1], phased[2], output=n.output[0] + "#mosaic")
                    emit(n, "phases", [n.output[0] + "#mosaic"], phased[3])
                    continue
                attrs, params = conv_node(w, bias, strides, pads, dils, int(attr(n, "group", 1)), where)
                emit(n, "conv", n.input[:1], attrs, params)
            elif op == "ConvTranspose":
                w = inits[n.input[1]]
                if w.ndim != 4 or attr(n, "output_shape") is not None or \
                        _text(attr(n, "auto_pad", "NOTSET")) != "NOTSET":
                    raise UnsupportedError(f"{where}: ConvTranspose other than 2-D with explicit pads")
                bias = inits[n.input[2]].copy() if len(n.input) > 2 and n.input[2] else None
                p = list(attr(n, "pads", [0, 0, 0, 0]))
                pad, attrs, params = conv_transpose_nodes(
                    w, bias, list(attr(n, "strides", [1, 1])), (p[0], p[1], p[2], p[3]),
                    list(attr(n, "output_padding", [0, 0])), list(attr(n, "dilations", [1, 1])),
                    int(attr(n, "group", 1)), where)
                emit(n, "pad", n.input[:1], pad, output=n.output[0] + "#spread")
                emit(n, "conv", [n.output[0] + "#spread"], attrs, params)
            elif op == "BatchNormalization":
                params = {"gamma": inits[n.input[1]].copy(), "beta": inits[n.input[2]].copy(),
                          "mean": inits[n.input[3]].copy(), "var": inits[n.input[4]].copy()}
                emit(n, "bn", n.input[:1], {"eps": float(attr(n, "epsilon", 1e-5))}, params)
            elif op == "Clip":
                lo = inits.get(n.input[1], consts.get(n.input[1])) if len(n.input) > 1 and n.input[1] else attr(n, "min")
                hi = inits.get(n.input[2], consts.get(n.input[2])) if len(n.input) > 2 and n.input[2] else attr(n, "max")
                if any(n.input[i] and n.input[i] not in inits and n.input[i] not in consts for i in range(1, len(n.input))):
                    raise UnsupportedError(f"{where}: Clip with bounds computed in the graph")
                lo, hi = (-np.inf if lo is None else float(lo)), (np.inf if hi is None else float(hi))
                if (lo, hi) == (0.0, 6.0):
                    emit(n, "relu6", n.input[:1])
                else:
                    emit(n, "act", n.input[:1], {"act": activations.spec("clip", lo, hi)})
            elif op == "PRelu":
                slope = inits.get(n.input[1], consts.get(n.input[1]))
                c = shapes.get(n.input[0], (0,))[0]
                if slope is None or slope.size not in (1, c) or (slope.size > 1 and slope.reshape(-1).size != c) \
                        or (slope.ndim >= 3 and slope.shape[-2:] != (1, 1)):
                    raise UnsupportedError(f"{where}: PRelu slope must be a constant of one value or one per channel")
                if slope.size == 1:
                    emit(n, "act", n.input[:1], {"act": activations.spec("leaky_relu", float(slope.reshape(-1)[0]))})
                else:
                    emit(n, "prelu", n.input[:1], {}, {"weight": slope.reshape(-1).astype(np.float32)})
            elif op == "Sigmoid" and silu_mul.get(n.output[0]) is not None:
                mul = silu_mul[n.output[0]]  # x * sigmoid(x): SiLU as exporters write it
                emit(n, "act", n.input[:1], {"act": "silu"})
                names[mul.output[0]] = names[n.output[0]]
                skip.add(id(mul))
            elif op in _ONNX_ACT:
                emit(n, "act", n.input[:1], {"act": _onnx_act(op, lambda k, d=None, n=n: attr(n, k, d), where)})
            elif op in ("Add", "Sub", "Mul", "Div") and any(i in consts or i in inits for i in n.input):
                first = n.input[0] not in consts and n.input[0] not in inits  # the tensor operand is first
                t, c = n.input[0 if first else 1], known.get(n.input[1 if first else 0])
                if c is None or t not in names:
                    raise UnsupportedError(f"{where}: {op} of two constants")
                w, b = affine_of_constant(op.lower(), c, first, ir_shapes[names[t]], where)
                emit(n, "affine", [t], {}, {"weight": w, "bias": b})
            elif op in ("Pad", "Resize", "DepthToSpace", "Softmax", "LogSoftmax"):
                x = ir_shapes[names[n.input[0]]]
                kind, attrs = _onnx_movement(n, lambda k, d=None, n=n: attr(n, k, d), consts, x, opset, where)
                emit(n, kind, n.input[:1], attrs)
            elif op in ("Add", "Sub", "Mul", "Div"):
                a, b = (shapes.get(i, ()) for i in n.input)
                if len(a) != len(b):
                    raise UnsupportedError(f"{where}: {op} of per-image shapes {a} and {b} (ranks differ)")
                if op == "Add":
                    emit(n, "add", list(n.input))
                else:
                    emit(n, "binary", list(n.input), {"op": op.lower()})
            elif op in ("MaxPool", "AveragePool"):
                if attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(n.output) > 1:
                    raise UnsupportedError(f"{where}: {op} with auto_pad or an indices output")
                k = list(attr(n, "kernel_shape"))
                attrs = _pool_attrs(k, list(attr(n, "strides", k)), sym(list(attr(n, "pads", [0, 0, 0, 0])), where),
                                    bool(attr(n, "ceil_mode", 0)), where, list(attr(n, "dilations", [1, 1])),
                                    bool(attr(n, "count_include_pad", 0)) or op == "MaxPool")
                if op == "AveragePool" and "dilation" in attrs:
                    raise UnsupportedError(f"{where}: dilated AveragePool")
                emit(n, "maxpool" if op == "MaxPool" else "avgpool", n.input[:1], attrs)
            elif op == "GlobalAveragePool":
                emit(n, "gap", n.input[:1])
            elif op in ("Reshape", "Unsqueeze", "Squeeze") and len(shapes.get(n.output[0], ())) in (1, 2, 3) \
                    and spatial(shapes.get(n.output[0], ())) == spatial(shapes.get(n.input[0], ())):
                emit(n, "reshape", n.input[:1], {"shape": list(shapes[n.output[0]])})
            elif op in ("Flatten", "Reshape"):
                if len(shapes.get(n.output[0], ())) != 1:
                    raise UnsupportedError(f"{where}: {op} to {shapes.get(n.output[0])} (only flattening "
                                           "each image to a vector is supported)")
                emit(n, "flatten", n.input[:1])
            elif op in ("Dropout", "Identity"):
                if n.input[0] in inits:  # exporters alias shared weights through Identity
                    inits[n.output[0]] = inits[n.input[0]]
                elif n.input[0] in names:
                    names[n.output[0]] = names[n.input[0]]
                else:
                    raise UnsupportedError(f"{where}: {op} of {n.input[0]!r}, which is neither a tensor "
                                           "of the graph nor a weight")
            elif op == "Slice":  # a channel range (chunk / split as exporters write them)
                x = ir_shapes[names[n.input[0]]]
                arg = [consts.get(i) if i else None for i in list(n.input[1:]) + [""] * (5 - len(n.input))]
                if any(i and i not in consts for i in n.input[1:]):
                    raise UnsupportedError(f"{where}: Slice with bounds computed from the model's data")
                starts, ends, axes, steps = (arg[:4] if opset >= 10 else
                                             (attr(n, "starts"), attr(n, "ends"), attr(n, "axes"), None))
                if len(x) not in (1, 3) or axes is None or [int(a) % (len(x) + 1) for a in np.ravel(axes)] != [1] \
                        or (steps is not None and np.ravel(steps).tolist() != [1]):
                    raise UnsupportedError(f"{where}: Slice other than a channel range with step 1")
                lo, hi, _ = slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0])).indices(x[0])
                if hi <= lo:
                    raise UnsupportedError(f"{where}: an empty Slice")
                emit(n, "slice", n.input[:1], {"start": lo, "channels": hi - lo})
            elif op == "Neg":
                c = ir_shapes[names[n.input[0]]][0]
                emit(n, "affine", n.input[:1], {}, {"weight": np.full(c, -1.0, np.float32),
                                                     "bias": np.zeros(c, np.float32)})
            elif op == "MatMul" and n.input[1] in inits and inits[n.input[1]].ndim == 2 \
                    and len(ir_shapes[names[n.input[0]]]) == 1:  # x @ W: a Linear without bias
                emit(n, "linear", n.input[:1], {}, {"weight": np.ascontiguousarray(inits[n.input[1]].T)})
            elif op == "Gemm":
                if attr(n, "transA", 0) or not attr(n, "transB", 0) or attr(n, "alpha", 1.0) != 1.0 \
                        or attr(n, "beta", 1.0) != 1.0:
                    raise UnsupportedError(f"{where}: Gemm must be x @ W^T + b (transB=1, alpha=beta=1)")
                params = {"weight": inits[n.input[1]].copy()}
                if len(n.input) > 2 and n.input[2]:
                    params["bias"] = inits[n.input[2]].reshape(-1).copy()
                emit(n, "linear", n.input[:1], {}, params)
            elif op in ("Concat", "Split"):
                rank = len(shapes.get(n.input[0], ())) + 1
                if rank != 4 or attr(n, "axis", 0) % 4 != 1:
                    raise UnsupportedError(f"{where}: {op} along axis {attr(n, 'axis', 0)}; only the channel axis "
                                           "of (N, C, H, W) is supported")
                if op == "Concat":
                    emit(n, "concat", list(n.input))
                    continue
                sizes = consts.get(n.input[1], inits.get(n.input[1])) if len(n.input) > 1 and n.input[1] else attr(n, "split")
                c = shapes[n.input[0]][0]
                sizes = [c // len(n.output)] * len(n.output) if sizes is None else [int(v) for v in np.ravel(sizes)]
                for (start, size), out in zip(zip(np.cumsum([0, *sizes[:-1]]).tolist(), sizes), n.output):
                    emit(n, "slice", n.input[:1], {"start": int(start), "channels": int(size)}, output=out)
            else:
                raise UnsupportedError(f"ONNX op {op} at node {where!r} is not supported by the compiler")
        except UnsupportedError as e:
            if on_unsupported is None:
                raise
            on_unsupported(n, e)
            for out in n.output:
                names[out] = unique_name(out, used)
                ir_shapes[names[out]] = shapes.get(out, ())
        except KeyError as e:
            raise FormatError(f"{path}: node {n.name or n.output[0]!r} ({n.op_type}) uses {e}, which is "
                              "neither a weight nor a tensor written before it") from None
        except IndexError:
            raise FormatError(f"{path}: node {n.name!r} ({n.op_type}) has too few inputs or attributes") from None
    out = names.get(g.output[0].name)
    if on_unsupported is not None:
        return Graph(tuple(in_shape), nodes, out or INPUT)
    if len(g.output) != 1 or out is None:
        raise UnsupportedError(f"{path}: exactly one graph output is supported")
    return Graph(tuple(in_shape), nodes, out)

