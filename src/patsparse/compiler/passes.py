"""Graph passes: fold BatchNorm, fuse activations and residual adds, drop no-ops.

After ``run_passes`` only kernel ops remain (conv, linear, maxpool, avgpool, gap); each carries
its fused epilogue (``act``, ``residual``). Why fuse: every unfused op would be a separate pass
over memory, and between-layer passes are where eager frameworks lose their time.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from .ir import INPUT, Graph, Node

KERNEL_OPS = ("conv", "linear", "maxpool", "avgpool", "gap")


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
    """conv -> bn  becomes one conv with scaled weights and a bias."""
    for bn in [n for n in g.nodes if n.op == "bn"]:
        src = bn.inputs[0]
        prod = None if src == INPUT else g.node(src)
        if prod is None or prod.op != "conv" or len(g.users(src)) != 1 or prod.act != "none":
            raise UnsupportedError(f"layer {bn.name!r}: BatchNorm2d not directly after a Conv2d "
                                   "(only conv -> bn can be folded)")
        p = bn.params
        scale = p["gamma"] / np.sqrt(p["var"] + bn.attrs["eps"])
        w = prod.params["weight"]
        b = prod.params.get("bias", np.zeros(w.shape[0], np.float32))
        prod.params["weight"] = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        prod.params["bias"] = ((b - p["mean"]) * scale + p["beta"]).astype(np.float32)
        _remove(g, bn)


def drop_noops(g: Graph) -> None:
    """identity nodes, and flatten feeding linear or the output (the layouts agree already)."""
    for n in [n for n in g.nodes if n.op in ("identity", "flatten")]:
        _remove(g, n)


def fuse_add(g: Graph) -> None:
    """add(a, b) -> the later-computed of a / b takes the other as its residual.

    The producer must be a conv or linear with nothing fused yet and no other user, and the
    other operand must already exist when it runs (it is earlier in topological order).
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
            raise UnsupportedError(f"add {add.name!r}: neither operand ({a!r}, {b!r}) is a conv or "
                                   "linear output it can be fused into")


def fuse_act(g: Graph) -> None:
    """relu / relu6 become the epilogue of their producer (after any fused residual)."""
    for act in [n for n in g.nodes if n.op in ("relu", "relu6")]:
        src = act.inputs[0]
        prod = None if src == INPUT else g.node(src)
        if prod is not None and prod.op in ("maxpool",) and act.op == "relu" and prod.act == "none" \
                and len(g.users(src)) == 1:
            pass  # relu commutes with max pooling: fuse it the same way
        elif prod is None or prod.op not in ("conv", "linear") or prod.act != "none" or len(g.users(src)) != 1:
            raise UnsupportedError(f"{act.op} {act.name!r} cannot be fused into its producer "
                                   f"{src!r} (needs a conv/linear output used only by it)")
        prod.act = act.op
        _remove(g, act)


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
