"""Graph passes: fold BatchNorm, fuse activations and residual adds, drop no-ops.

After ``run_passes`` only kernel ops remain (conv, linear, maxpool, avgpool, gap, and the
channelwise act / affine / prelu where nothing could take them in); each carries its fused
epilogue (``act``, ``residual``). Why fuse: every unfused op would be a separate pass
over memory, and between-layer passes are where eager frameworks lose their time.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from .ir import INPUT, Graph, Node
from .layout import spatial

KERNEL_OPS = ("conv", "linear", "maxpool", "avgpool", "gap", "act", "affine", "prelu", "binary", "concat", "slice",
              "pad", "resize", "pixel_shuffle", "shuffle", "softmax", "phases")
# producers whose epilogue can apply any activation (act(op(x) + bias + residual))
ACT_PRODUCERS = ("conv", "linear", "maxpool", "avgpool", "gap", "affine", "prelu", "binary")
ACT_OPS = ("relu", "relu6", "act")


def replace_uses(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
        if n.residual == old:
            n.residual = new
    if g.output == old:
        g.output = new


def _remove(g: Graph, node: Node) -> None:
    """Drop a single-input node, its users read its input instead."""
    g.nodes.remove(node)
    replace_uses(g, node.name, node.inputs[0])


def fold_bn(g: Graph) -> None:
    """conv -> bn  becomes one conv with scaled weights and a bias; any other bn becomes an
    ``affine`` node (per-channel scale in ``weight``, shift in ``bias``: channelwise.py)."""
    for bn in [n for n in g.nodes if n.op == "bn"]:
        src = bn.inputs[0]
        prod = None if src == INPUT else g.node(src)
        p = bn.params
        scale = p["gamma"] / np.sqrt(p["var"] + bn.attrs["eps"])
        if prod is None or prod.op != "conv" or len(g.users(src)) != 1 or prod.act != "none" \
                or prod.residual is not None:
            bn.op, bn.params = "affine", {"weight": scale.astype(np.float32),
                                          "bias": (p["beta"] - p["mean"] * scale).astype(np.float32)}
            continue
        w = prod.params["weight"]
        b = prod.params.get("bias", np.zeros(w.shape[0], np.float32))
        prod.params["weight"] = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        prod.params["bias"] = ((b - p["mean"]) * scale + p["beta"]).astype(np.float32)
        _remove(g, bn)


def drop_noops(g: Graph) -> None:
    """identity, flatten and reshape nodes: the generated code stores their output exactly as
    their input (capture admits only those reshapes)."""
    for n in [n for n in g.nodes if n.op in ("identity", "flatten", "reshape")]:
        prod = None if n.inputs[0] == INPUT else g.node(n.inputs[0])
        if g.output == n.name and prod is not None and spatial(prod.shape) == spatial(n.shape):
            prod.shape = n.shape  # the model's output keeps its shape (stored alike: (C,) and (C, 1, 1))
        _remove(g, n)


def fuse_add(g: Graph) -> None:
    """add(a, b) -> the later-computed of a / b takes the other as its residual.

    The producer must be a conv or linear with nothing fused yet and no other user, and the
    other operand must already exist when it runs (it is earlier in topological order) and have
    the same shape. Any other add stays a ``binary`` node (channelwise.gen_binary).
    """
    order = {n.name: i for i, n in enumerate(g.nodes)}
    order[INPUT] = -1
    for add in [n for n in g.nodes if n.op == "add"]:
        a, b = add.inputs
        for p, o in sorted([(a, b), (b, a)], key=lambda t: -order[t[0]]):
            if p == INPUT:
                continue
            prod = g.node(p)
            if (prod.op in ("conv", "linear") and prod.act == "none" and prod.residual is None
                    and len(g.users(p)) == 1 and order[o] < order[p] and g.shape_of(o) == prod.shape):
                prod.residual = o
                g.nodes.remove(add)
                replace_uses(g, add.name, p)
                break
        else:
            add.op, add.attrs = "binary", {"op": "add"}


def fuse_act(g: Graph) -> None:
    """An activation becomes the epilogue of its producer (after any fused residual) where the
    producer is a kernel with an epilogue, has none yet and feeds only it; otherwise it stays a
    standalone ``act`` node carrying the activation string (codegen/activations.py)."""
    for act in [n for n in g.nodes if n.op in ACT_OPS]:
        spec = act.attrs.get("act", act.op) if act.op == "act" else act.op
        src = act.inputs[0]
        prod = None if src == INPUT else g.node(src)
        if prod is not None and prod.op == "phases" and prod.attrs["inverse"] and len(g.users(src)) == 1:
            # a dilated conv's inverse mosaic only gathers: the activation goes into the conv
            # before it (the positions it applies to in vain are never read)
            prod = g.node(prod.inputs[0])
            src = prod.name
        if prod is not None and prod.op in ACT_PRODUCERS and prod.act == "none" and len(g.users(src)) == 1:
            prod.act = spec
            _remove(g, act)
        else:
            act.op, act.act, act.attrs = "act", spec, {}


def run_passes(g: Graph) -> Graph:
    """All passes in order; the result holds kernel ops only."""
    fold_bn(g)
    drop_noops(g)
    fuse_add(g)
    fuse_act(g)
    for n in g.nodes:
        if n.op not in KERNEL_OPS:
            raise UnsupportedError(f"{n.op} {n.name!r} is left after fusion; it has no kernel")
    if g.output == INPUT:
        raise UnsupportedError("the model computes nothing (its output is its input)")
    return g
