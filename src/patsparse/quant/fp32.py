"""The fused IR run in float32 PyTorch, node by node: what calibration observes, and what a layer
with no int8 kernel computes inside the quantised model (between a dequantise and a quantise).

Why the fused IR and not the user's module: BatchNorm is folded and activations and residual adds
are fused exactly as the compiler sees them, so the tensors calibrated here are the tensors the
int8 kernels produce, one per node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..compiler.codegen.activations import parse
from ..compiler.ir import Node
from ..errors import UnsupportedError

_ACTS = {"relu": F.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu,
         "gelu": F.gelu, "hardswish": F.hardswish, "selu": F.selu}
_ACTS_P = {"leaky_relu": lambda x, a: F.leaky_relu(x, a), "elu": lambda x, a: F.elu(x, a),
           "hardsigmoid": lambda x, a, b: torch.clamp(x * a + b, 0.0, 1.0),
           "softplus": lambda x, beta, th: F.softplus(x, beta, th),
           "clip": lambda x, lo, hi: torch.clamp(x, lo, hi)}


def activation(act: str, x: torch.Tensor, where: str) -> torch.Tensor:
    """``x`` through an IR activation string (codegen/activations.py)."""
    if act == "none":
        return x
    name, params = parse(act)
    fn = _ACTS.get(name) if not params else _ACTS_P.get(name)
    if fn is None:
        raise UnsupportedError(f"quantize: activation {act!r} of {where!r} has no PyTorch form here")
    return fn(x, *params)


def _t(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


def run_node(n: Node, xs: list[torch.Tensor], res: torch.Tensor | None) -> torch.Tensor:
    """One node's float32 output (batch first) from its inputs and fused residual."""
    x, a, p = xs[0], n.attrs, n.params
    if n.op == "conv":
        y = F.conv2d(x, _t(p["weight"]), _t(p["bias"]) if "bias" in p else None, a["stride"], a["padding"],
                     1, a["groups"])
    elif n.op == "linear":
        y = F.linear(x.flatten(1), _t(p["weight"]), _t(p["bias"]) if "bias" in p else None)
    elif n.op == "maxpool":
        y = F.max_pool2d(x, a["k"], a["stride"], a["padding"], a.get("dilation", 1), a.get("ceil_mode", False))
    elif n.op == "avgpool":
        y = F.avg_pool2d(x, a["k"], a["stride"], a["padding"], a.get("ceil_mode", False),
                         a.get("count_include_pad", True))
    elif n.op == "gap":
        y = x.mean(dim=(2, 3), keepdim=True)
    elif n.op in ("act",):
        y = x
    elif n.op == "affine":
        y = x * _t(p["weight"]).reshape(1, -1, 1, 1) + _t(p["bias"]).reshape(1, -1, 1, 1)
    elif n.op == "prelu":
        y = F.prelu(x, _t(p["weight"]))
    elif n.op == "binary":
        y = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[a["op"]](x, xs[1])
    elif n.op == "concat":
        y = torch.cat(xs, dim=1)
    elif n.op == "slice":
        y = x[:, a["start"]: a["start"] + a["channels"]]
    else:
        raise UnsupportedError(f"quantize: op {n.op!r} of {n.name!r} has no PyTorch form here")
    if res is not None:
        y = y + res
    return activation(n.act, y, n.name).reshape(x.shape[0], *n.shape)
